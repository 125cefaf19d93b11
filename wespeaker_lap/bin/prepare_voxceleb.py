"""Recipe stage 1: VoxCeleb archives -> Kaldi dirs vox1_dev, vox1, vox2_dev and the cleaned trials.

    python -m wespeaker_lap.bin.prepare_voxceleb --archive_dir /data/voxceleb_archives --data_dir data --nj 8

The archive folder holds the official files: vox1_dev_wav.zip (or vox1_dev_wav_partaa..ad),
vox1_test_wav.zip, vox2_dev_aac.zip (or vox2_dev_aac_partaa..ah), veri_test2.txt,
list_test_all2.txt and list_test_hard2.txt. A re-run skips finished steps.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional, Sequence

from wespeaker_lap.data.archives import ArchiveDir, PrepareError, read_md5_file
from wespeaker_lap.data.kaldi import DataError
from wespeaker_lap.data.voxceleb import prepare_voxceleb
from wespeaker_lap.utils.logging import setup_logging


def add_archive_options(parser: argparse.ArgumentParser) -> None:
    """Options shared with ``prepare_augment``: where the archives are, md5 checks, download."""
    parser.add_argument("--archive_dir", required=True, help="folder holding the official archives")
    parser.add_argument("--data_dir", default="data", help="output folder of the Kaldi data dirs (default: data)")
    parser.add_argument("--raw_dir", default=None, help="where audio is unpacked (default: <data_dir>/raw_data)")
    parser.add_argument("--nj", type=int, default=min(8, os.cpu_count() or 1), help="parallel jobs")
    md5 = parser.add_mutually_exclusive_group()
    md5.add_argument("--md5_file", default=None,
                     help="md5sum-style table ('<md5>  <archive name>' lines) overriding the published sums")
    md5.add_argument("--skip_md5", action="store_true", help="do not check archive md5 sums (you know they are fine)")
    parser.add_argument("--download_url_base", nargs="+", default=(),
                        help="URL(s) of folders holding the files; only missing files are fetched from them")
    parser.add_argument("--user", default=None, help="download user name (default: from ~/.netrc, if any)")
    parser.add_argument("--password", default=None, help="download password (default: from ~/.netrc, if any)")
    parser.add_argument("--log_file", default=None, help="log file (default: <data_dir>/log/<script>.log)")


def archive_dir_from_options(args: argparse.Namespace) -> ArchiveDir:
    md5 = read_md5_file(args.md5_file) if args.md5_file else None
    return ArchiveDir(args.archive_dir, md5=md5, skip_md5=args.skip_md5, url_bases=args.download_url_base,
                      user=args.user, password=args.password)


def start_logging(args: argparse.Namespace, script: str) -> None:
    setup_logging(args.log_file or str(Path(args.data_dir) / "log" / f"{script}.log"))


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_archive_options(parser)
    parser.add_argument("--keep_m4a", action="store_true", help="keep the extracted VoxCeleb2 m4a files")
    parser.add_argument("--skip_failed_conversions", action="store_true",
                        help="leave out of vox2_dev the m4a files that ffmpeg cannot convert (they are listed and "
                             "counted) instead of stopping")
    args = parser.parse_args(argv)
    start_logging(args, "prepare_voxceleb")
    try:
        prepare_voxceleb(archive_dir_from_options(args), args.data_dir, args.raw_dir, args.nj, args.keep_m4a,
                         args.skip_failed_conversions)
    except (DataError, PrepareError) as err:
        raise SystemExit(f"prepare_voxceleb: error: {err}") from None


if __name__ == "__main__":
    main()
