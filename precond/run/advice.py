"""Advice for a command line that Hydra cannot compose: the one line a user needs instead of Hydra's own.

Hydra's messages answer a different question than the user asked: ``stpes=10`` gets "use +stpes=10" (which
adds a key nothing reads), ``regularization.variable=q`` under ``regularization=none`` gets the same, and
``model=null`` ends in a 39-line traceback. This module reads the config files themselves (``conf/``, or the
copy inside an installed wheel) to say what was meant:

* a null choice of a group that needs an option is refused before Hydra runs, naming the options
  (and the group's ``none`` where it has one);
* an unknown key gets "did you mean" among the keys of its level, with or without a ``+``;
* a key that only some options of a group have names those options (``regularization=l2``);
* an unknown option gets "did you mean" among the group's options, and a few well-known names get a
  pointer to what they are in precond (``preconditioner=adamw``).
"""
from __future__ import annotations

import difflib
import re
from functools import lru_cache
from pathlib import Path
from typing import Optional

import yaml

from precond.errors import ConfigError

#: groups whose choice may be null (off, or no delta); every other group needs an option
NULLABLE_GROUPS = ("curvature", "normalization_arm", "experiment")
#: well-known names that are not options here, and what they are in precond
KNOWN_ELSEWHERE = {
    ("preconditioner", "adamw"): "AdamW is Adam with L2 in z: preconditioner=adam regularization=l2 "
                                 "regularization.variable=z",
    ("preconditioner", "adam_l2"): "Adam + L2 is Adam with L2 in p: preconditioner=adam regularization=l2 "
                                   "regularization.variable=p",
    ("normalization", "bnp"): "BNP is an optimizer and a normalization together: normalization_arm=bnp (or "
                              "preconditioner=bnp normalization=batchnorm)",
}


@lru_cache(maxsize=4)
def group_options(conf_dir: str) -> dict[str, dict[str, set]]:
    """``{group: {option: its top-level keys}}`` of the config groups under ``conf_dir`` and in the installed
    packages that ship config groups (Hydra's own excluded): the options Hydra itself will offer."""
    from precond.extensions import config_dirs

    groups: dict[str, dict[str, set]] = {}
    roots = [Path(conf_dir), *(Path(d) for d in config_dirs())]
    for directory in sorted((d for root in roots for d in root.iterdir()), key=lambda d: d.name):
        if not directory.is_dir() or directory.name == "hydra":
            continue
        for path in sorted(directory.glob("*.yaml")):
            try:
                node = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError):
                node = {}
            keys = {k for k in node if not str(k).startswith("_") and k != "defaults"} if isinstance(node, dict) \
                else set()
            groups.setdefault(directory.name, {})[path.stem] = keys
    return groups


@lru_cache(maxsize=4)
def top_level_keys(conf_dir: str) -> set:
    """The keys of the primary config (``train.yaml``) and the group names: what ``key=value`` may name."""
    try:
        node = yaml.safe_load((Path(conf_dir) / "train.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        node = {}
    return {k for k in node if k not in ("defaults", "hydra")} | set(group_options(conf_dir))


def refuse_null_groups(argv: list[str], conf_dir: str) -> None:
    """``model=null`` and the like: a group that needs an option is refused in one line, before Hydra runs."""
    groups = group_options(conf_dir)
    experiment = _experiment_file(argv, conf_dir)
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")
        if sep and key in NULLABLE_GROUPS and isinstance(experiment.get(key), dict) and \
                value.strip().lower() in ("null", "~"):
            raise ConfigError(key, f"a {key} option, or null with none of its keys set", value,
                              f"the experiment sets {key}.{next(iter(experiment[key]))}: turn it off with "
                              f"{key}.enabled=false")
        if sep and key in groups and key not in NULLABLE_GROUPS and value.strip().lower() in ("null", "none", "~",
                                                                                             ""):
            if value.strip() == "none" and "none" in groups[key]:
                continue  # the group's own "none" option
            options = sorted(groups[key])
            off = f"; to turn it off use {key}=none" if "none" in options else f"; {key} cannot be off"
            raise ConfigError(key, f"one of {options}", value or "(empty)", f"pick an option{off}")


def _experiment_file(argv: list[str], conf_dir: str) -> dict:
    """The experiment file a command line selects (empty when none, or when it cannot be read)."""
    name = next((a.partition("=")[2] for a in argv if a.lstrip("+").startswith("experiment=")), "")
    try:
        node = yaml.safe_load((Path(conf_dir) / "experiment" / f"{name}.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, ValueError):
        return {}
    return node if isinstance(node, dict) else {}


def null_choices_as_deletions(argv: list[str]) -> list[str]:
    """``curvature=null`` (the documented default) as Hydra spells "no option": ``~curvature``. Hydra itself
    fails on a null group override with a traceback; a deletion also turns off an experiment file's choice."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        bare = key.lstrip("+")
        out.append(f"~{bare}" if sep and bare in NULLABLE_GROUPS and value.strip().lower() in ("null", "~") else arg)
    return out


def advice(message: str, argv: list[str], conf_dir: str) -> Optional[str]:
    """What to do instead, for Hydra's message about this command line (None: Hydra's own line is enough)."""
    unknown = re.search(r"Could not override '([^']+)'|Key '([^']+)' is not in struct|"
                        r"Could not append to config\. An item is already at '([^']+)'", message)
    if unknown:
        key = next(g for g in unknown.groups() if g)
        return _key_advice(_full_key(key, argv), conf_dir)
    missing = re.search(r"Could not find '([^']+)/([^']+)'", message)
    if missing:
        return _option_advice(missing.group(1), missing.group(2), conf_dir)
    return None


def _full_key(key: str, argv: list[str]) -> str:
    """Hydra names the leaf (``variable``) in some messages: the override that set it names the full key."""
    for arg in argv:
        name = arg.partition("=")[0].lstrip("+~")
        if name == key or name.endswith("." + key):
            return name
    return key


def _key_advice(key: str, conf_dir: str) -> Optional[str]:
    groups = group_options(conf_dir)
    head, _, rest = key.partition(".")
    if rest and head in groups:
        leaf = rest.split(".")[0]
        having = sorted(option for option, keys in groups[head].items() if leaf in keys)
        if having:
            return (f"{key} belongs to {head} option{'s' if len(having) > 1 else ''} {', '.join(having)}: select "
                    f"one ({head}={having[0]} {key}=…)")
        known = sorted(set().union(*groups[head].values()))
        close = difflib.get_close_matches(leaf, known, n=3)
        suggestion = (f"; did you mean {', '.join(f'{head}.{c}' for c in close)}?" if close
                      else f"; its keys: {', '.join(known)}")
        return f"no option of conf/{head}/ has '{leaf}'{suggestion}"
    close = difflib.get_close_matches(head, sorted(top_level_keys(conf_dir)), n=3)
    if close:
        return f"did you mean {' or '.join(close)}? (a '+' would add a key that nothing reads)"
    return "not a key of precond's config: see `precond-train --cfg job` for every key"


def _option_advice(group: str, option: str, conf_dir: str) -> Optional[str]:
    options = sorted(group_options(conf_dir).get(group, {}))
    if (group, option.lower()) in KNOWN_ELSEWHERE:
        return KNOWN_ELSEWHERE[(group, option.lower())]
    if not options:
        return None
    close = difflib.get_close_matches(option, options, n=2)
    return (f"did you mean {group}={' or '.join(close)}? " if close else "") + f"{group} options: {', '.join(options)}"
