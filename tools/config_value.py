#!/usr/bin/env python3
"""Print one value of a resolved experiment (training) or evaluation config (for recipes).

    config_value.py --config conf/systems/lap_wavlm_large.yaml model.upstream.name [key=value ...]
    config_value.py --schema eval --config conf/eval.yaml cohort.source [key=value ...]
"""
from __future__ import annotations

import argparse
import sys

from wespeaker_lap.config import ConfigError, EvalConfig, ExperimentConfig, load_config, to_dict

SCHEMAS = {"experiment": ExperimentConfig, "eval": EvalConfig}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=[], help="YAML file; repeat to merge (later wins)")
    p.add_argument("--schema", choices=SCHEMAS, default="experiment", help="which config the files are")
    p.add_argument("key", help="dotted key, e.g. model.upstream.name")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    args = p.parse_args()
    try:
        value = to_dict(load_config(args.config, args.overrides, cls=SCHEMAS[args.schema]))
        for part in args.key.split("."):
            value = value[part]
    except ConfigError as err:
        sys.exit(f"config_value.py: {err}")
    except (KeyError, TypeError):
        sys.exit(f"config_value.py: no key {args.key}")
    print("" if value is None else value)


if __name__ == "__main__":
    main()
