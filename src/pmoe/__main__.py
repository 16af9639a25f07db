"""`python -m pmoe`: the pmoe command line, also as `torchrun --nproc-per-node N -m pmoe train ...`, where every
process runs it and rank 0 alone prints results on stdout (errors and warnings come from any rank, on stderr)."""
import os
import sys

from pmoe.cli import console

if int(os.environ.get("RANK", "0")) > 0:
    sys.stdout = open(os.devnull, "w")
console()
