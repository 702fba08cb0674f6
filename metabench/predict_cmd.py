"""`metabench predict checkpoint=PATH support=DIR query=DIR_OR_FILES [out=CSV] [device=auto]`:
classify image files with a trained model, the support set given as ``DIR/<class>/*.png``.
Every file is checked and decoded before anything is printed or written."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from rich.table import Table

from metabench.console import console, report_error
from metabench.data.folder import visible
from metabench.errors import ConfigError, DataError, UserError
from metabench.files import atomic_write
from metabench.preprocess import IMAGE_SUFFIXES

KEYS = ("checkpoint", "support", "query", "out", "device")
USAGE = ("usage: metabench predict checkpoint=PATH support=DIR query=DIR_OR_FILES "
         "[out=predictions.csv] [device=auto]\n"
         "  support: DIR/<class>/*.png|jpg (one folder per class, its name the label)\n"
         "  query: a folder of images, or image files separated by commas")


def _image(p: Path) -> Path:
    """``p``, refused in one line unless its suffix says it is an image."""
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"{p} is not an image (expected .png, .jpg or .jpeg files)")
    return p


def _images(folder: Path) -> list[Path]:
    """The visible files of ``folder`` (sorted), each one an image by its suffix."""
    return [_image(p) for p in sorted(folder.iterdir()) if p.is_file() and visible(p)]


def support_set(root: Path) -> tuple[list[Path], list[str]]:
    """Files and labels from ``root/<class>/*``; an empty class is refused."""
    if not root.is_dir():
        raise DataError(f"support={root} is not a folder (expected {root}/<class>/*.png)")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and visible(p))
    if not classes:
        raise DataError(f"support={root} holds no class folders (expected {root}/<class>/*.png)")
    files, labels = [], []
    for c in classes:
        found = _images(c)
        if not found:
            raise DataError(f"support class folder {c} holds no images")
        files += found
        labels += [c.name] * len(found)
    return files, labels


def query_files(spec: str) -> list[Path]:
    out: list[Path] = []
    for part in filter(None, (s.strip() for s in spec.split(","))):
        p = Path(part)
        if p.is_dir():
            out += _images(p)
        elif p.is_file():
            out.append(_image(p))
        else:
            raise DataError(f"query file or folder {p} does not exist")
    if not out:
        raise DataError(f"query={spec} names no image files")
    return out


def parse(args: list[str]) -> dict[str, str]:
    settings = {"out": "predictions.csv", "device": "auto"}
    for a in args:
        key, eq, value = a.partition("=")
        if not eq:
            raise ConfigError(f"expected key=value arguments, got: {a}")
        if key not in KEYS:
            raise ConfigError(f"{key} is not a predict argument (arguments: {', '.join(KEYS)})")
        settings[key] = value
    missing = [k for k in ("checkpoint", "support", "query") if not settings.get(k)]
    if missing:
        raise ConfigError(f"predict needs {', '.join(f'{k}=' for k in missing)} (see "
                          "metabench predict --help)")
    return settings


def predictions_csv(files: list[Path], labels: list, proba, classes: list) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["file", "predicted", "probability", *(f"p_{c}" for c in classes)])
    for f, label, row in zip(files, labels, proba.tolist(), strict=True):
        w.writerow([str(f), label, f"{max(row):.6f}", *(f"{p:.6f}" for p in row)])
    return buf.getvalue().encode()


def predict_cmd(args: list[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    from metabench.api import load

    try:
        s = parse(args)
        support, labels = support_set(Path(s["support"]))
        queries = query_files(s["query"])
        model = load(s["checkpoint"], device=s["device"])
        if model.kind != "classification":
            raise ConfigError(f"metabench predict classifies images; {s['checkpoint']} is a "
                              "regression model (use metabench.load in Python)")
        with console.status("adapting and predicting"):
            task = model.adapt(support, labels)
            proba = task.predict_proba(queries)
        predicted = [task.classes[i] for i in proba.argmax(-1).tolist()]
        out = Path(s["out"])
        atomic_write(out, lambda f: f.write(predictions_csv(queries, predicted, proba,
                                                            task.classes)))
    except UserError as e:
        report_error(e)
        return e.exit_code
    table = Table(title=f"metabench predict: {len(task.classes)}-way, {len(support)} support "
                        "images")
    for col in ("file", "predicted class", "probability"):
        table.add_column(col)
    for f, label, p in zip(queries, predicted, proba.max(-1).values.tolist(), strict=True):
        table.add_row(str(f), str(label), f"{p:.3f}")
    console.print(table)
    console.print(f"predictions for {len(queries)} images written to {out} (checkpoint "
                  f"{s['checkpoint']})", highlight=False, soft_wrap=True, markup=False)
    return 0
