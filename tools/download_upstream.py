#!/usr/bin/env python3
"""Fill an upstream weight cache once, so that training and extraction run offline.

  download_upstream.py wavlm_large --cache_dir exp/s3prl_cache                 # s3prl's downloader
  download_upstream.py wavlm_large --cache_dir DIR --from_file WavLM-Large.pt  # offline: copy a file in
  download_upstream.py wavlm_large --cache_dir DIR --print_path                # where it goes
  download_upstream.py hf:microsoft/wavlm-base-plus --cache_dir DIR            # transformers' cache

Then set ``model.upstream.cache_dir: DIR``. After staging, the upstream is built once from the
cache as a check. Prints the cached file (``hf:``: directory) on stdout.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="s3prl upstream name (e.g. wavlm_base_plus) or hf:<hub id>")
    parser.add_argument("--cache_dir", required=True, help="cache directory (model.upstream.cache_dir)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--from_file", help="checkpoint to copy into the cache instead of downloading")
    action.add_argument("--print_path", action="store_true", help="print where the weights go and exit")
    args = parser.parse_args(argv)

    from wespeaker_lap.upstream import Upstream, cache_file, download_weights, stage_weights
    from wespeaker_lap.utils.logging import setup_logging

    setup_logging()
    log = logging.getLogger("download_upstream")
    if args.print_path:
        print(cache_file(args.name, args.cache_dir))
        return
    if args.from_file:
        path = stage_weights(args.name, args.from_file, args.cache_dir)
    else:
        path = download_weights(args.name, args.cache_dir)
    try:
        upstream = Upstream(args.name, cache_dir=args.cache_dir)
    except Exception:
        if args.from_file:
            path.unlink()  # do not leave a file that does not load where s3prl will look
        raise
    log.info("%s loads from the cache: %d hidden states of %d", args.name, upstream.n_layers, upstream.hidden_dim)
    print(path)


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError) as err:
        sys.exit(f"download_upstream.py: {err}")
