"""`python -m tcp_teardown` runs the command line."""

from tcp_teardown.cli import main

main()
