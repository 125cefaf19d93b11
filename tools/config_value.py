#!/usr/bin/env python3
"""Print one value, or every value, of a resolved experiment (training) or evaluation config (for recipes).

    config_value.py --config conf/systems/lap_wavlm_large.yaml model.upstream.name [key=value ...]
    config_value.py --schema eval --config conf/eval.yaml cohort.source [key=value ...]
    config_value.py --flat [--section cohort ...] --config A.yaml [--config B.yaml] [key=value ...]

``--flat`` prints one ``dotted.key=<JSON value>`` line per leaf of the config (or of each ``--section``,
a dotted key), sorted; every positional argument is then an override. Recipes record these lines as
the settings of a stage (``tools/sentinel.py``), so a changed value is named by its key.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, Iterator, Tuple

from wespeaker_lap.config import ConfigError, EvalConfig, ExperimentConfig, load_config, to_dict

SCHEMAS = {"experiment": ExperimentConfig, "eval": EvalConfig}


def _lookup(tree: Dict[str, Any], key: str) -> Any:
    value: Any = tree
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


def _leaves(value: Any, prefix: str) -> Iterator[Tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key in sorted(value):
            yield from _leaves(value[key], f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=[], help="YAML file; repeat to merge (later wins)")
    p.add_argument("--schema", choices=SCHEMAS, default="experiment", help="which config the files are")
    p.add_argument("--flat", action="store_true", help="print every leaf as key=<JSON value> lines")
    p.add_argument("--section", action="append", default=[], help="with --flat: only this dotted key (repeatable)")
    p.add_argument("words", nargs="*", metavar="[key] key=value",
                   help="the dotted key to print (not with --flat), then key=value overrides")
    args = p.parse_intermixed_args()  # overrides may come before or after the options
    if not args.flat and not args.words:
        p.error("the key to print is required (or --flat)")
    key, overrides = (None, args.words) if args.flat else (args.words[0], args.words[1:])
    try:
        tree = to_dict(load_config(args.config, overrides, cls=SCHEMAS[args.schema]))
        if key is not None:
            value = _lookup(tree, key)
            print("" if value is None else value)
            return
        for section in args.section or [""]:
            for name, value in _leaves(_lookup(tree, section) if section else tree, section):
                print(f"{name}={json.dumps(value, sort_keys=True)}")
    except ConfigError as err:
        sys.exit(f"config_value.py: {err}")
    except KeyError as err:
        sys.exit(f"config_value.py: no key {err.args[0]}")


if __name__ == "__main__":
    main()
