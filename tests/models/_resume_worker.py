"""Subprocess half of the exact-resume test: restore, train 3 steps, dump."""

import sys

import numpy as np

from tests.models import test_checkpoint as tc


def main(ckpt_dir, out_file):
  state = tc.restore_and_train(ckpt_dir, steps=3)
  np.savez(out_file, **tc.flat_params(state))


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
