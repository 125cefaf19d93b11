"""Command-line options shared by several entry scripts (``wespeaker_lap/bin``).

* ``add_eval_config_options`` / ``eval_config``: ``--config conf/eval.yaml`` plus ``key=value``
  overrides, read into a validated ``EvalConfig`` (stages 4-6);
* ``add_archive_options`` / ``archive_dir_from_options`` / ``start_prepare_logging``: where the official
  archives are, md5 checks and downloads (stage 1 and the augmentation lists).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:
    from wespeaker_lap.config import EvalConfig
    from wespeaker_lap.data.archives import ArchiveDir


def add_eval_config_options(parser: argparse.ArgumentParser) -> None:
    """``--config YAML`` (repeatable) and positional ``key=value`` overrides of the evaluation config."""
    parser.add_argument("--config", action="append", default=[], metavar="YAML",
                        help="evaluation config (conf/eval.yaml); repeat to merge (later wins); none: the defaults")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. cohort.top_k=300")


def eval_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None
                ) -> tuple[argparse.Namespace, "EvalConfig"]:
    """Parse ``argv`` (options and overrides in any order) and load the ``EvalConfig``; errors exit via argparse."""
    from wespeaker_lap.config import ConfigError, EvalConfig, load_config

    args = parser.parse_intermixed_args(argv)
    try:
        return args, load_config(args.config, args.overrides, cls=EvalConfig)
    except ConfigError as err:
        parser.error(str(err))


def add_archive_options(parser: argparse.ArgumentParser) -> None:
    """Where the official archives are, md5 checks, download (``prepare_voxceleb``, ``prepare_augment``)."""
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


def archive_dir_from_options(args: argparse.Namespace, expected: str) -> "ArchiveDir":
    """The ``ArchiveDir`` of the options; a missing folder is a ``DataError`` listing ``expected`` (its contents)."""
    from wespeaker_lap.data.archives import ArchiveDir, read_md5_file
    from wespeaker_lap.data.kaldi import DataError

    if not Path(args.archive_dir).is_dir() and not args.download_url_base:
        raise DataError(f"archive folder {args.archive_dir} not found. Expected in it:\n{expected}")
    md5 = read_md5_file(args.md5_file) if args.md5_file else None
    return ArchiveDir(args.archive_dir, md5=md5, skip_md5=args.skip_md5, url_bases=args.download_url_base,
                      user=args.user, password=args.password)


def start_prepare_logging(args: argparse.Namespace, script: str) -> None:
    """Log to ``--log_file``, by default ``<data_dir>/log/<script>.log``."""
    from wespeaker_lap.utils.logging import setup_logging

    setup_logging(args.log_file or str(Path(args.data_dir) / "log" / f"{script}.log"))
