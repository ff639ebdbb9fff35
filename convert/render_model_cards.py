"""Render the model card of every published variant (ada_hf.model_card.PUBLISHED_VARIANTS) into model_cards/<name>.md.

Each card is rendered from the config that the variant's values describe (real LLaVA-1.5 7B/13B shapes, CLIP
ViT-L/14-336), so its budget table is the converted model's own. Needs no weights and no network.

    python convert/render_model_cards.py                  # write model_cards/*.md
    python convert/render_model_cards.py --check          # exit 1 if a card is missing or out of date
    python convert/render_model_cards.py --namespace me   # usage snippets load "me/<name>"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ada_hf.model_card import PUBLISHED_VARIANTS, render_model_card, variant_config

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "model_cards"


def render_all(namespace: str | None = None) -> dict[str, str]:
    """`{file name: card text}` for every published variant."""
    cards = {}
    for name, variant in PUBLISHED_VARIANTS.items():
        repo_id = f"{namespace}/{name}" if namespace else None
        cards[f"{name}.md"] = render_model_card(variant_config(variant), repo_id=repo_id, variant=variant).content
    return cards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--namespace", help="Hub namespace of the converted repos (default: a <namespace> placeholder)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a card differs from its render")
    args = parser.parse_args(argv)

    cards = render_all(args.namespace)
    if args.check:
        stale = [n for n, text in cards.items() if not (args.out / n).is_file() or (args.out / n).read_text() != text]
        for name in stale:
            print(f"out of date: {args.out / name}", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in cards.items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
