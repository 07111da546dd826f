#!/usr/bin/env python3
"""Wireshark extcap "TCP teardown (annotated replay)": a launcher into tcp_teardown.extcap.

`tcp-teardown wireshark install` writes a launcher bound to the right interpreter for
you; this file is for copying by hand into Wireshark's personal extcap folder when the
package is installed into the `python3` found on PATH.
"""

import sys

from tcp_teardown.extcap import main

if __name__ == "__main__":
    sys.exit(main())
