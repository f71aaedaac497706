#!/usr/bin/env python
"""Convert an original ELMo release (bilm-tf options.json + weights .hdf5) to a Hugging Face checkpoint folder.

    python conversion/convert_elmo_original_to_hf.py --options-file OPTIONS.json --weight-file WEIGHTS.hdf5 \
        --output-dir OUT [--vocab-file VOCAB.txt]

The same as `hf-elmo convert` (which also takes `--elmoformanylangs MODEL_DIR` instead of the two files, for
HIT-SCIR's ELMoForManyLangs releases); the mappings live in `hf_elmo.checkpoints.bilm_tf` / `.elmoformanylangs`.
"""

import argparse
import sys

from hf_elmo.cli import add_convert_arguments, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_convert_arguments(parser)
    parser.parse_args()  # --help and argument errors name this script
    sys.exit(main(["convert", *sys.argv[1:]]))
