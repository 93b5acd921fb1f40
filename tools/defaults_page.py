# ruff: noqa: E501, E702 - the page's prose, one line per Markdown line
"""docs/results/defaults.md from the frozen defaults record and the provenance rows in
``tools/defaults_provenance.py``: one row per default, its frozen value and where it came from.

    python tools/defaults_page.py           # write the page
    python tools/defaults_page.py --check   # exit 1 when the page is not what the record and rows give

Run it after ``medbackdoor defaults --freeze``; ``tests/test_scorecard.py`` checks the page is up to date.
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from defaults_provenance import SECTIONS  # noqa: E402

REC = ROOT / "medbackdoor" / "configs" / "defaults.json"
PAGE = ROOT / "docs" / "results" / "defaults.md"


def render() -> str:
    """The page's text."""
    raw = REC.read_bytes()
    rec = json.loads(raw)
    digest = hashlib.sha256(raw).hexdigest()[:12]

    def get(key):
        if key.startswith('defenses.'):
            _, name, _, opt = key.split('.', 3)
            return rec['defenses'][name]['options'][opt]
        if key.startswith('triggers.'):
            _, name, opt = key.split('.', 2)
            return rec['triggers'][name][opt]
        if key == 'holdout':
            return rec['holdout']
        sec, opt = key.split('.', 1)
        return rec[sec][opt]

    # every default key of the record
    keys = []
    for name, d in rec['defenses'].items():
        keys += [f'defenses.{name}.options.{o}' for o in d['options']]
    for name, d in rec['triggers'].items():
        keys += [f'triggers.{name}.{o}' for o in d]
    for sec in ('attack', 'abl_training', 'eval', 'rules', 'grids'):
        keys += [f'{sec}.{o}' for o in rec[sec]]
    keys.append('holdout')

    seen = [r[0] for _, _, rows in SECTIONS for r in rows]
    assert len(seen) == len(set(seen)), [k for k in seen if seen.count(k) > 1]
    missing = sorted(set(keys) - set(seen)); extra = sorted(set(seen) - set(keys))
    assert not missing and not extra, (missing, extra)

    counts = {'paper': 0, 'a priori': 0, 'tuning': 0, 'none recorded': 0}
    none_keys = []
    out = []
    w = out.append
    w("# Defaults and their provenance")
    w("")
    w("`medbackdoor/configs/defaults.json` is the frozen defaults record. It holds every option default of the 16")
    w("built-in defenses (with each defense's `kind` and `revision`), every built-in trigger's constructor defaults, the")
    w("attack settings of the run config's `trigger` block, the `train.abl` settings, the default defense holdout, the")
    w("`eval` settings, the benchmark's rules (`medbackdoor.report.scorecard.RULES`) and a digest of each benchmark grid")
    w("file (`configs/sweeps/benchmark.yaml` and `benchmark-tune.yaml`). `medbackdoor defaults` prints the record's")
    w("digest and every default the code has changed since the record was frozen, and exits with 1 when there is one.")
    w("`medbackdoor defaults --freeze` writes the code's current defaults as the record. The digest, the first 12 hex")
    w("digits of the SHA-256 of the record's text, goes into every defense summary and every scorecard row; an")
    w("evaluation run under another digest is another evaluation ([the ledger](ledger.md) counts them). The current")
    w(f"digest is `{digest}`.")
    w("")
    w("This page gives one row per default in the record: its key, its value as the record stores it (JSON), and where")
    w("the value came from. `kind` and `revision` are not defaults and have no rows. The provenance is one of:")
    w("")
    w("- **paper**: the value is the source paper's own setting (or, where named, its reference code's);")
    w("- **a priori**: set from a principle, not from any run (a nominal false-positive rate, a speed-only batch size, a")
    w("  conventional cut);")
    w("- **tuning**: chosen between candidates on tuning runs, with the runs and the numbers that chose it. Where a value")
    w("  is also a paper's but was compared on tuning runs, the row says tuning and names the paper;")
    w("- **none recorded**: no page or docstring here says why the value is what it is. A row may still add a")
    w("  fact (the paper's own value, what the grids run instead).")
    w("")
    w("The sources are [Defenses: tuning](defenses-tuning.md), [development runs](defenses-development.md) (its section")
    w("on ANP, I-BAU, FT-SAM, ABL and IBD-PSC), [earlier measurements](defenses-history.md), the")
    w("[Defenses guide](../defenses.md), the [Attacks guide](../attacks.md), [The paper](../paper.md) and the module")
    w("docstrings. Tuning numbers are from the synthetic tuning grid `defenses-tune` (dataset seed 1, no image in common")
    w("with the evaluation grids; training seeds 100–102, of which only seed 100 has run) unless a row names other runs.")
    w("Its first pass ran on 2026-12-03, the second later that day, the third on 2026-12-04. Where a comparison was made")
    w("while other defaults of the same defense had other values than today, the row says so.")
    for title, intro, rows in SECTIONS:
        w("")
        w(f"## {title}")
        w("")
        if intro:
            # wrap intro at 116
            words, line = intro.split(), ""
            for word in words:
                if len(line) + len(word) + 1 > 116:
                    w(line); line = word
                else:
                    line = f"{line} {word}" if line else word
            w(line)
            w("")
        w("| key | value | provenance |")
        w("|---|---|---|")
        for key, kind, text in rows:
            counts[kind] += 1
            if kind == 'none recorded':
                none_keys.append(key)
                prov = "none recorded" + (f". {text[0].upper()}{text[1:]}" if text else "")
            else:
                assert text, key
                prov = f"{kind}: {text}"
            value = json.dumps(get(key), ensure_ascii=False)
            w(f"| `{key}` | `{value}` | {prov} |")
    total = sum(counts.values())
    assert total == len(keys)
    w("")
    w("## Counts")
    w("")
    w(f"{total} defaults: paper {counts['paper']}, a priori {counts['a priori']}, tuning {counts['tuning']}, "
      f"none recorded {counts['none recorded']}.")
    w("One a priori row, `defenses.anp.options.budget`, was changed after an evaluation run (see its row).")
    w("")
    w("None recorded:")
    w("")
    for k in none_keys:
        w(f"- `{k}`")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the page differs from what is rendered")
    args = parser.parse_args()
    text = render()
    if args.check:
        same = PAGE.is_file() and PAGE.read_text() == text
        print(f"{PAGE} is {'up to date' if same else 'out of date: run python tools/defaults_page.py'}")
        return 0 if same else 1
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
