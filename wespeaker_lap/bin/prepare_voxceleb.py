"""Recipe stage 1: VoxCeleb archives -> Kaldi dirs vox1_dev, vox1, vox2_dev and the cleaned trials.

    python -m wespeaker_lap.bin.prepare_voxceleb --archive_dir /data/voxceleb_archives --data_dir data --nj 8

The archive folder holds the official files (see EXPECTED). A re-run skips finished steps.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from wespeaker_lap.data.archives import PrepareError
from wespeaker_lap.data.kaldi import DataError
from wespeaker_lap.data.voxceleb import prepare_voxceleb
from wespeaker_lap.utils.options import add_archive_options, archive_dir_from_options, start_prepare_logging

EXPECTED = """\
  vox1_dev_wav.zip   or vox1_dev_wav_partaa .. vox1_dev_wav_partad
  vox1_test_wav.zip
  vox2_dev_aac.zip   or vox2_dev_aac_partaa .. vox2_dev_aac_partah
  veri_test2.txt list_test_all2.txt list_test_hard2.txt   (cleaned trial lists)
  musan.tar.gz       or its extracted musan/        (stage 2: bin.prepare_augment)
  rirs_noises.zip    or its extracted RIRS_NOISES/  (stage 2)"""


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"Expected in --archive_dir:\n{EXPECTED}")
    add_archive_options(parser)
    parser.add_argument("--keep_m4a", action="store_true", help="keep the extracted VoxCeleb2 m4a files")
    parser.add_argument("--skip_failed_conversions", action="store_true",
                        help="leave out of vox2_dev the m4a files that ffmpeg cannot convert (they are listed and "
                             "counted) instead of stopping")
    args = parser.parse_args(argv)
    try:
        archives = archive_dir_from_options(args, EXPECTED)
        start_prepare_logging(args, "prepare_voxceleb")
        prepare_voxceleb(archives, args.data_dir, args.raw_dir, args.nj, args.keep_m4a, args.skip_failed_conversions)
    except (DataError, PrepareError) as err:
        raise SystemExit(f"prepare_voxceleb: error: {err}") from None


if __name__ == "__main__":
    from wespeaker_lap.utils.errors import run_script

    run_script(main)
