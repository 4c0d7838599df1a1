"""`python -m memq` is `memq`."""

from memq.cli import main

main()
