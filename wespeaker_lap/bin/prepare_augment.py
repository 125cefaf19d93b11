"""Recipe stage 2: MUSAN and RIRS_NOISES -> data/musan.list and data/rirs.list (``<key> <path> <type>``).

    python -m wespeaker_lap.bin.prepare_augment --archive_dir /data/voxceleb_archives --data_dir data --nj 8

The archive folder holds musan.tar.gz and rirs_noises.zip, or their extracted musan/ and
RIRS_NOISES/ folders. A re-run skips finished steps.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from wespeaker_lap.data.archives import PrepareError
from wespeaker_lap.data.augment_lists import RIR_TYPES, prepare_augment
from wespeaker_lap.data.kaldi import DataError
from wespeaker_lap.utils.options import add_archive_options, archive_dir_from_options, start_prepare_logging

EXPECTED = """\
  musan.tar.gz       or its extracted musan/
  rirs_noises.zip    or its extracted RIRS_NOISES/"""


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_archive_options(parser)
    parser.add_argument("--rir_sets", nargs="+", choices=RIR_TYPES, default=list(RIR_TYPES),
                        help="RIRs to list (default: all, the official pool)")
    parser.add_argument("--musan_chunk_s", type=float, default=5.0, help="MUSAN window length in seconds")
    parser.add_argument("--musan_hop_s", type=float, default=3.0, help="MUSAN window hop in seconds")
    args = parser.parse_args(argv)
    try:
        archives = archive_dir_from_options(args, EXPECTED)
        start_prepare_logging(args, "prepare_augment")
        prepare_augment(archives, args.data_dir, args.raw_dir, args.nj,
                        args.rir_sets, args.musan_chunk_s, args.musan_hop_s)
    except (DataError, PrepareError) as err:
        raise SystemExit(f"prepare_augment: error: {err}") from None


if __name__ == "__main__":
    from wespeaker_lap.utils.errors import run_script

    run_script(main)
