"""Typed configs for every study: dataclass -> dict -> dataclass, presets, ``--set a.b=v`` and generated flags.

A study's config is a tree of dataclasses (the constructor is the config): sections nest per component (the MCL
options are :class:`mclcore.losses.mcl.MCLConfig` wherever MCL is used), each documented once in its docstring.
The tree is saved as a plain dict (:func:`to_dict`) in ``config.json`` and in every checkpoint, and rebuilt from it
(:func:`from_dict`, strict: an unknown key is an error naming it). The same machinery serves every entry point:

* presets are nested dicts merged onto the defaults (:func:`merge`), one ``PRESETS`` table per study;
* ``--config FILE`` is a JSON object merged the same way;
* ``--set a.b=v`` overrides one leaf (:func:`apply_overrides`), parsed in the type of its default;
* :func:`add_config_flags` generates one flag per leaf (``--epochs``, ``--mcl-tau``) and
  :func:`flag_overrides` applies the ones given.

Precedence everywhere: defaults <- preset <- ``--config`` <- flags / ``--set``.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from dataclasses import fields

__all__ = ["to_dict", "from_dict", "merge", "apply_overrides", "config_diff", "coerce", "add_config_flags",
           "flag_overrides", "leaf_paths", "check_numbers"]


def to_dict(cfg) -> dict:
    """The config tree as plain JSON-able data (tuples become lists)."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def _default(cls, f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise ValueError(f"{cls.__name__}.{f.name} has no default")


def from_dict(cls, data: dict, *, where: str = "config", strict: bool = True):
    """Inverse of :func:`to_dict` for the dataclass ``cls``: sections rebuilt, lists back to tuples where the
    default is a tuple, fields missing from ``data`` left at their defaults. ``strict``: a key that is not a field
    raises ValueError naming ``where`` and the key (a typo never passes silently)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object of {cls.__name__} fields, got {type(data).__name__}")
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown and strict:
        raise ValueError(f"{where}: unknown {cls.__name__} field(s) {unknown} (known: {sorted(names)})")
    kw = {}
    for name, f in names.items():
        if name not in data:
            continue
        v, default = data[name], _default(cls, f)
        if dataclasses.is_dataclass(default):
            # missing fields of a section come from the field's default instance (a study's own MCLConfig, say),
            # not from the section class's defaults
            if isinstance(v, dict):
                v = _deep_update(to_dict(default), v, f"{where}.{name}")
            v = from_dict(type(default), v, where=f"{where}.{name}", strict=strict)
        elif isinstance(default, tuple) and isinstance(v, list):
            v = tuple(v)
        kw[name] = v
    return cls(**kw)


def merge(cfg, data: dict, *, where: str = "config"):
    """Apply the nested dict ``data`` (a preset, a ``--config`` file) onto ``cfg``; returns a new config."""
    return from_dict(type(cfg), _deep_update(to_dict(cfg), data, where), where=where)


def _deep_update(base: dict, data: dict, where: str) -> dict:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    out = dict(base)
    for k, v in data.items():
        if isinstance(out.get(k), dict) and isinstance(v, dict):
            out[k] = _deep_update(out[k], v, f"{where}.{k}")
        else:
            out[k] = v
    return out


def coerce(value: str, default, hint=None):
    """The string ``value`` of ``--set KEY=value`` in the type of the field's ``default`` (or type ``hint``).

    ``none``/``null`` gives None where the annotation admits it (``float | None``); bool: 1/true/yes/on or
    0/false/no/off; tuple: comma-separated numbers or words (``1,2,4``); int; float; a field whose default is None
    or a string: empty gives None, anything else the string (a number where the annotation says ``float | None``).
    """
    if value.lower() in ("none", "null") and hint is not None and _optional(hint):
        return None
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    if isinstance(default, tuple):
        def one(p):
            p = p.strip()
            try:
                return int(p)
            except ValueError:
                try:
                    return float(p)
                except ValueError:
                    return p
        return tuple(one(p) for p in value.split(",") if p.strip())
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    if value.lower() in ("none", "null", ""):
        return None
    if hint is not None and float in _hint_types(hint):
        return float(value)
    return value


def _optional(hint) -> bool:
    """Whether the annotation admits None (``float | None``)."""
    return "None" in hint if isinstance(hint, str) else type(None) in typing.get_args(hint)


def _hint_types(hint) -> tuple:
    if isinstance(hint, str):
        return tuple(t for name, t in (("float", float), ("int", int), ("str", str)) if name in hint)
    args = typing.get_args(hint)
    return args or (hint,)


def _resolve(cfg, key: str, what: str):
    """(section object, field) of the dotted ``key``, or ValueError naming ``what`` and the key."""
    obj, parts = cfg, key.strip().split(".")
    for p in parts[:-1]:
        if not dataclasses.is_dataclass(obj) or p not in {f.name for f in fields(obj)}:
            raise ValueError(f"{what}: unknown config section {p!r} in {key!r}")
        obj = getattr(obj, p)
    name = parts[-1]
    fmap = {f.name: f for f in fields(obj)} if dataclasses.is_dataclass(obj) else {}
    if name not in fmap:
        raise ValueError(f"{what}: unknown config key {key!r}")
    return obj, fmap[name]


def apply_overrides(cfg, overrides, example: str = "section.key=1e-4"):
    """``["mcl.tau=0.07", "seed=3"]`` -> ``cfg`` (a dataclass tree) modified in place and returned.

    Errors (ValueError, naming ``--set`` and the key): no ``=``, an unknown section or key, a key that is a section,
    a value that does not parse as the field's type. ``example`` is shown in the first of those messages.
    """
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"--set: expected KEY=VALUE (e.g. {example}), got {item!r}")
        key, value = item.split("=", 1)
        obj, f = _resolve(cfg, key, "--set")
        default = getattr(obj, f.name)
        if dataclasses.is_dataclass(default):
            raise ValueError(f"--set: {key!r} is a section; set one of its fields")
        try:
            setattr(obj, f.name, coerce(value, default, f.type))
        except ValueError as e:
            raise ValueError(f"--set: {key}={value!r}: {e}") from None
    return cfg


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """``"section.key: saved X vs given Y"`` for every leaf where the config dicts ``a`` (saved) and ``b`` differ."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) or isinstance(vb, dict):
            out += config_diff(va if isinstance(va, dict) else {}, vb if isinstance(vb, dict) else {},
                               f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: saved {va!r} vs given {vb!r}")
    return out


# ------------------------------------------------------------------------------------------------ generated flags
def leaf_paths(cls, prefix: tuple = ()) -> list[tuple[tuple, dataclasses.Field, object]]:
    """Every leaf field of the dataclass ``cls``: ``(path, field, default)`` in declaration order."""
    out = []
    for f in fields(cls):
        default = _default(cls, f)
        if dataclasses.is_dataclass(default):
            out += leaf_paths(type(default), prefix + (f.name,))
        else:
            out.append((prefix + (f.name,), f, default))
    return out


_DEST = "cfg__"


def add_config_flags(parser, cls, *, flatten: tuple = (), skip: tuple = (), title: str | None = None) -> None:
    """One ``--flag`` per leaf of ``cls`` (``--epochs``, ``--mcl-tau``), all defaulting to None (= not given).

    The flag is the leaf's path joined by ``-`` with underscores as dashes, leaving out the sections named in
    ``flatten`` (``train.epochs`` -> ``--epochs`` with ``flatten=("train",)``). ``skip``: dotted paths not offered.
    Booleans get ``--x`` / ``--no-x``; tuples take several values. :func:`flag_overrides` reads them back.
    """
    group = parser.add_argument_group(title or f"config ({cls.__name__}; every field, see --dump-config)")
    for path, f, default in leaf_paths(cls):
        dotted = ".".join(path)
        if dotted in skip:
            continue
        flag = "--" + "-".join(p for p in path[:-1] if p not in flatten).replace("_", "-")
        flag = flag + ("-" if flag != "--" else "") + path[-1].replace("_", "-")
        help_text = f"{dotted} (default {default!r})"
        dest = _DEST + "__".join(path)
        if isinstance(default, bool):
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(default, tuple):
            elem = type(default[0]) if default else next(iter(_hint_types(f.type)), str)   # () : the hint's type
            group.add_argument(flag, dest=dest, nargs="+", type=elem, default=None, metavar=elem.__name__.upper(),
                               help=help_text)
        else:
            kinds = _hint_types(f.type)
            t = type(default) if default is not None else next((k for k in kinds if k in (int, float)), str)
            group.add_argument(flag, dest=dest, type=t, default=None, metavar=t.__name__.upper(), help=help_text)


def flag_overrides(args: argparse.Namespace) -> dict:
    """The generated flags that were given, as a nested dict to :func:`merge`."""
    out: dict = {}
    for k, v in vars(args).items():
        if not k.startswith(_DEST) or v is None:
            continue
        path = k[len(_DEST):].split("__")
        d = out
        for p in path[:-1]:
            d = d.setdefault(p, {})
        d[path[-1]] = list(v) if isinstance(v, tuple) else v
    return out


# --------------------------------------------------------------------------------------------------- number checks
_NONNEG_FLOAT = re.compile(r"(^|_)(lambda|lr|weight_decay|beta|gamma|tau|clip|noise|scale|var|std|eps|frac)")
_NONNEG_INT = re.compile(r"(steps|every|epochs|batch_size|samples|seed|episodes|frames|horizon|^n_|_len$|dim|width|"
                         r"depth|heads|hidden|ch$|channels|layers|patch|embed|concepts|num_|pool|blocks)")
_POSITIVE = re.compile(r"(batch_size|^lr$|_lr$|lr\d$|^tau$|dim$|heads$|patch$|^ch$|channels$|width$)")


def check_numbers(cfg, where: str = "") -> None:
    """ValueError naming the dotted field of the first number a config cannot mean: NaN or inf anywhere; a
    negative weight, rate, scale, variance, count or size (by the field's name: ``lambda_*``, ``*lr*``, ``beta``,
    ``*steps``, ``*batch_size``, ...); a zero batch size, learning rate, temperature or width. Studies call it from
    their ``validate`` so ``--set stages.lambda_mcl=-1`` is refused, not trained."""
    import math

    for path, _, _ in leaf_paths(type(cfg)):
        obj = cfg
        for p in path:
            obj = getattr(obj, p)
        name, dotted = path[-1], where + ".".join(path)
        values = obj if isinstance(obj, tuple) else (obj,)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{dotted}: expected a finite number, got {obj!r}")
            positive = bool(_POSITIVE.search(name))
            if (isinstance(v, float) and _NONNEG_FLOAT.search(name)) or (isinstance(v, int) and
                                                                          _NONNEG_INT.search(name)):
                if v < 0 or (positive and v == 0):
                    raise ValueError(f"{dotted}: expected a number {'> 0' if positive else '>= 0'}, got {obj!r}")
