"""`ser-dist` command line: parses arguments, builds a config dataclass, calls one library function."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields

from ser_dist.errors import SerDistError


def _default(cls, name):
    for f in fields(cls):
        if f.name == name:
            return f.default
    raise KeyError(name)


def _layers(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.replace("+", ",").split(",") if x.strip())


def _add_prepare(sub) -> None:
    from ser_dist.api import PrepareConfig

    p = sub.add_parser("prepare", help="turn a corpus folder into a manifest (Parquet)")
    p.add_argument("--corpus", required=True, help="EMODB, RAVDESS or IEMOCAP")
    p.add_argument("--data-root", default=_default(PrepareConfig, "data_root"), help="folder holding emodb/, ravdess/, iemocap/ (default: %(default)s)")
    p.add_argument("--out", default=_default(PrepareConfig, "out"), help="manifest folder (default: %(default)s)")
    p.add_argument("--on-error", choices=["raise", "skip"], default=_default(PrepareConfig, "on_error"))
    p.add_argument("--iemocap-label-set", choices=["four", "all"], default=_default(PrepareConfig, "iemocap_label_set"))
    p.set_defaults(run=_run_prepare)


def _run_prepare(args) -> None:
    from ser_dist.api import PrepareConfig, prepare_corpus

    manifest, path = prepare_corpus(
        PrepareConfig(corpus=args.corpus, data_root=args.data_root, out=args.out, on_error=args.on_error, iemocap_label_set=args.iemocap_label_set)
    )
    print(f"{len(manifest)} utterances -> {path}")
    print(manifest["label"].value_counts().to_string())


def _add_extract(sub) -> None:
    from ser_dist.api import ExtractConfig
    from ser_dist.features.extract import ExtractionOptions

    p = sub.add_parser("extract", help="extract LOGMEL / HUBERT / FUSION features on Ray Data into Parquet")
    p.add_argument("--corpus", required=True)
    p.add_argument("--features", default=_default(ExtractConfig, "features"), help="LOGMEL, HUBERT or FUSION (default: %(default)s)")
    p.add_argument("--data-root", default=_default(ExtractConfig, "data_root"), help="(default: %(default)s)")
    p.add_argument("--out", default=_default(ExtractConfig, "out"), help="feature store root (default: %(default)s)")
    p.add_argument("--ssl-model", default=_default(ExtractConfig, "ssl_model"), help="transformers encoder: local folder or hub id (default: %(default)s)")
    p.add_argument("--ssl-layer", type=_layers, default=_default(ExtractConfig, "ssl_layers"), help="hidden layer index, or several averaged: 2 or 1,2 (default: last)")
    p.add_argument("--num-workers", type=int, default=_default(ExtractionOptions, "num_workers"), help="Ray actors (default: one per CPU or GPU)")
    p.add_argument("--batch-size", type=int, default=_default(ExtractionOptions, "batch_size"), help="(default: %(default)s)")
    p.add_argument("--float16", action="store_true", help="store features as float16 (halves disk)")
    p.add_argument("--on-error", choices=["raise", "skip"], default=_default(ExtractConfig, "on_error"))
    p.set_defaults(run=_run_extract)


def _run_extract(args) -> None:
    from ser_dist.api import ExtractConfig, extract
    from ser_dist.features.extract import ExtractionOptions

    result = extract(
        ExtractConfig(
            corpus=args.corpus, features=args.features, data_root=args.data_root, out=args.out,
            ssl_model=args.ssl_model, ssl_layers=args.ssl_layer, on_error=args.on_error,
            storage_dtype="float16" if args.float16 else "float32",
            extraction=ExtractionOptions(num_workers=args.num_workers, batch_size=args.batch_size),
        )
    )
    print(
        f"{result.directory}: {result.n_extracted} extracted, {result.n_already_done} already stored, "
        f"{len(result.skipped)} skipped, {result.seconds:.1f} s"
    )


SUBCOMMANDS = [_add_prepare, _add_extract]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ser-dist", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.run(args)
    except SerDistError as exc:
        print(f"ser-dist {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
