# python scripts/probe_demo_task.py --order natural --wordings w4 --out /tmp/probe/main.json   # on 2 vCPU AMD EPYC (AVX2, no AVX-512), 24 GiB, no GPU, torch 2.13 CPU fp32, shared with other jobs (load 1-12)
"""Probe a CPU demo task for RandOpt with the embedded SmolLM2-135M-Instruct (greedy, few new tokens).

Task "countdown-lite": two numbers a, b and a target t = a op b with op in {+, -, *}; the model must answer
with one expression using a and b once each and one of + - * that equals t. The check parses the first
line of the answer (a tiny parser, never eval): ``x op y`` optionally followed by ``= N`` (then N must equal t).

Phases (all generation batched: every prompt of a set in one left-padded greedy ``generate``):
  1. each wording on a dev set (64 prompts); pick the shortest prompt with accuracy in 10-30%, else the one
     closest to 20% (a single --wordings entry skips this);
  2. base accuracy with that wording on the selection (64) and test (200) sets;
  3. for each sigma, N candidates theta + sigma * eps_i (eps_i ~ N(0, I) from torch.Generator seed i, the same
     seeds for every sigma) scored on the selection set; fraction strictly beating the base;
  4. the top-k candidates of each sigma (by selection accuracy) on the test set, and their majority vote.
The noise here is a plain ``p.add_(sigma * torch.randn_like(p, generator=g))`` over every parameter (the tied
embedding/lm_head once), restored by copying the base weights back; the project's real noise module is separate.

Runs behind the findings below (model: ``python -m randopt_verl.assets.embedded``; ``--model`` was that folder):
  wordings:  --wordings-only --n-dev 64 [--order natural] [--max-operand 9] --wordings ...
  main:      --order natural --wordings w4                                            (631.8 s)
  more σ=3e-3 candidates (selection only + top-2 on test):
             --order natural --wordings w4 --sigmas 3e-3 --cand-offset 4 --n-cands 28 --skip-base-test  (586.3 s)

Findings (2026-11-23, the machine above; greedy, max_new_tokens=12, fp32, 2 threads, OMP_WAIT_POLICY=PASSIVE):
- Dev accuracy (64 prompts) per wording: numbers shown shuffled: w1 4.7%, w2 3.1%, w3 1.6%; in solution order:
  w4 7.8%, w7 6.2%, w6 1.6%, w1 0%, w5 0%; single-digit numbers (max 9): w4 0%, w7 0%. Only "+" is ever
  solved (20-27%); "-" and "*" are 0%. The model mostly answers "The answer is 31." or starts explaining.
- Chosen w4 (default SmolLM2 system turn, 58 prompt tokens). Base: selection 20.3% (13/64, an easy draw),
  test 10.0% (20/200; + 26.7%, - 0%, * 0%); 90/200 test answers hit the 12-token cap.
- sigma=1e-3, 4 candidates: 0 beat the base on selection, 3 tie (greedy outputs barely move); top-2 test 10.0%, 10.5%.
- sigma=3e-3, 28 candidates: 5 beat (18%), 7 tie, 16 worse; selection 2..16 correct of 64 (base 13).
  Top by selection -> test: 16/64 -> 11.0%, 15/64 -> 12.5%, 15/64 -> 11.0%, 13/64 -> 10.5% (base 10.0%,
  one standard error 2.1 points); majority vote of each run's top-2: 12.5%, 13.0%.
- Cost: one 64-prompt selection pass 15-18 s wall at load 1-2 (24-28 s CPU), 25-50 s at load 4-6; a
  200-prompt test pass 50-95 s; perturb+restore 1.2-1.3 s. Prefill dominates (64 prompts x 1 new token took
  12 s of the 16 s for 12 tokens). Without OMP_WAIT_POLICY=PASSIVE, 2 OpenMP threads on the oversubscribed
  machine were 10-25x slower.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import sys
import time

# On a shared, oversubscribed CPU, OpenMP's default busy-waiting made 2-thread generation 10x slower here
# (measured: a 1x50-token forward went from 0.45s to 2.6-10.6s). Passive waiting removes that; must be set
# before torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

OPS = ("+", "-", "*")
# (system message or None for SmolLM2's default system turn, user message)
WORDINGS = {
    "w1": (None, "Using the numbers {a} and {b} exactly once each and one of the operations +, -, *, make {t}. "
                 "Answer with only the expression."),
    "w2": ("Answer with only the expression.", "Using {a} and {b} once each and one of +, -, *, make {t}."),
    "w3": ("", "Use {a} and {b} once each with one of + - * to make {t}. Answer with only the expression, "
               "like 3 + 4."),
    "w4": (None, "Using {a} and {b} once each and one of + - *, make {t}. Answer with only the expression."),
    "w5": ("You answer with only an arithmetic expression, like 7 + 2.", "Make {t} from {a} and {b} using one of + - *."),
    "w6": ("Answer with only the expression.", "Using {a} and {b} once each and one of + - *, make {t}."),
    "w7": (None, "Using {a} and {b} once each and one of + - *, make {t}. Answer with only the expression, "
                 "like 2 + 3."),
}


def messages(wording: str, p: dict) -> list[dict]:
    system, user = WORDINGS[wording]
    return ([] if system is None else [{"role": "system", "content": system}]) + \
        [{"role": "user", "content": user.format(**p)}]
ANSWER_RE = re.compile(r"\(?\s*(\d+)\s*([-+*×xX])\s*(\d+)\s*\)?\s*(?:=\s*(-?\d+))?")


def make_problems(n: int, seed: int, lo: int = 2, hi: int = 20, shuffle: bool = True) -> list[dict]:
    """n problems: a, b uniform in [lo, hi], a != b, op uniform; for '-' the larger comes first (t > 0).

    shuffle: show the two numbers in random order (the model must choose operator and order); else in the
    order of the solution (a op b = t).
    """
    rnd = random.Random(seed)
    out = []
    while len(out) < n:
        a, b = rnd.randint(lo, hi), rnd.randint(lo, hi)
        if a == b:
            continue
        op = rnd.choice(OPS)
        if op == "-" and a < b:
            a, b = b, a
        t = a + b if op == "+" else a - b if op == "-" else a * b
        shown = (b, a) if rnd.random() < 0.5 and shuffle else (a, b)
        out.append(dict(a=shown[0], b=shown[1], t=t, op=op))
    return out


def check(answer: str, p: dict) -> bool:
    """True iff the first line is `x op y [= N]` with {x, y} == {a, b}, op in + - *, x op y == t (== N)."""
    line = answer.strip().split("\n", 1)[0].strip().strip("`$*").rstrip(".").strip()
    m = ANSWER_RE.fullmatch(line)
    if not m:
        return False
    x, op, y, n = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
    if sorted((x, y)) != sorted((p["a"], p["b"])):
        return False
    v = x + y if op == "+" else x - y if op == "-" else x * y
    return v == p["t"] and (n is None or int(n) == p["t"])


def normalize(answer: str) -> str | None:
    """Key for majority voting: the parsed expression; None (abstain) if the answer does not parse."""
    line = answer.strip().split("\n", 1)[0].strip().strip("`$*").rstrip(".").strip()
    m = ANSWER_RE.fullmatch(line)
    if not m:
        return None
    x, op, y, n = int(m.group(1)), "*" if m.group(2) in "×xX" else m.group(2), int(m.group(3)), m.group(4)
    v = x + y if op == "+" else x - y if op == "-" else x * y
    return f"{x}{op}{y}" if n is None or int(n) == v else f"{x}{op}{y}={n}"  # a wrong "= N" is another answer


class Generator:
    def __init__(self, model, tok, max_new_tokens: int):
        self.model, self.tok, self.max_new = model, tok, max_new_tokens
        self.n_calls, self.seconds = 0, 0.0
        self.cache = {}

    def encode(self, problems, wording):
        key = (id(problems), wording)
        if key not in self.cache:
            msgs = [messages(wording, p) for p in problems]
            self.cache[key] = self.tok.apply_chat_template(msgs, add_generation_prompt=True, padding=True,
                                                           return_tensors="pt", return_dict=True)
        return self.cache[key]

    @torch.inference_mode()
    def __call__(self, problems, wording):
        enc = self.encode(problems, wording)
        t0 = time.perf_counter()
        out = self.model.generate(**enc, do_sample=False, max_new_tokens=self.max_new,
                                  eos_token_id=self.tok.eos_token_id, pad_token_id=self.tok.pad_token_id)
        self.seconds += time.perf_counter() - t0
        self.n_calls += 1
        new = out[:, enc["input_ids"].shape[1]:]
        ended = (new == self.tok.eos_token_id).any(dim=1)
        answers = self.tok.batch_decode(new, skip_special_tokens=True)
        correct = [check(a, p) for a, p in zip(answers, problems)]
        return dict(answers=answers, correct=correct, acc=sum(correct) / len(correct),
                    truncated=int((~ended).sum()), new_len=new.shape[1],
                    prompt_len=int(enc["input_ids"].shape[1]))


def per_op(problems, correct):
    tally = collections.defaultdict(lambda: [0, 0])
    for p, c in zip(problems, correct):
        tally[p["op"]][0] += c
        tally[p["op"]][1] += 1
    return {op: round(k / n, 3) for op, (k, n) in sorted(tally.items())}


T0 = time.perf_counter()


def say(msg):
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="HF folder (default: randopt_verl.assets.embedded.default_model_path())")
    ap.add_argument("--wordings", default="w1,w2,w3")
    ap.add_argument("--n-dev", type=int, default=64)
    ap.add_argument("--n-sel", type=int, default=64)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--n-cands", type=int, default=32)
    ap.add_argument("--sigmas", default="1e-3,3e-3")
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--order", choices=("natural", "shuffled"), default="shuffled",
                    help="show the numbers in solution order or in random order")
    ap.add_argument("--max-operand", type=int, default=20)
    ap.add_argument("--cand-offset", type=int, default=0, help="first candidate index (seed = 1000 + index)")
    ap.add_argument("--skip-base-test", action="store_true", help="do not re-measure the base on the test set")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--budget-s", type=float, default=570.0, help="skip what is left past this wall time")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--wordings-only", action="store_true", help="stop after comparing the wordings")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer
    if args.model is None:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        from randopt_verl.assets.embedded import default_model_path
        args.model = default_model_path()
    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    say(f"loaded {args.model} in {time.perf_counter() - t:.1f}s; threads={torch.get_num_threads()} "
        f"load={os.getloadavg()}")
    gen = Generator(model, tok, args.max_new_tokens)
    res = dict(args=vars(args), settings=dict(
        prompt="tokenizer.apply_chat_template([{'role': 'system', 'content': SYSTEM}, {'role': 'user', "
               "'content': USER}], add_generation_prompt=True) (no system entry when SYSTEM is None: SmolLM2's "
               "template then adds its default system turn), padding_side=left, pad <|endoftext|>",
        generate=f"do_sample=False (greedy), max_new_tokens={args.max_new_tokens}, eos=<|im_end|>, fp32, "
                 "one batch per prompt set"))

    kw = dict(hi=args.max_operand, shuffle=args.order == "shuffled")
    dev = make_problems(args.n_dev, seed=10_000 + args.seed, **kw)
    sel = make_problems(args.n_sel, seed=20_000 + args.seed, **kw)
    test = make_problems(args.n_test, seed=30_000 + args.seed, **kw)

    # 1. wordings
    res["wordings"] = {}
    for w in args.wordings.split(",") if "," in args.wordings else []:  # a single wording: no comparison
        r = gen(dev, w)
        res["wordings"][w] = dict(acc=r["acc"], truncated=r["truncated"], prompt_len=r["prompt_len"],
                                  per_op=per_op(dev, r["correct"]), examples=r["answers"][:6])
        say(f"wording {w}: dev acc {r['acc']:.3f} per-op {per_op(dev, r['correct'])} truncated "
            f"{r['truncated']}/{len(dev)} prompt_len {r['prompt_len']} examples {r['answers'][:4]}")
    # in the 10-30% band prefer the shortest prompt (prefill dominates the cost); else closest to 20%
    band = [w for w, r in res["wordings"].items() if 0.10 <= r["acc"] <= 0.30]
    wording = (args.wordings if not res["wordings"] else
               min(band, key=lambda w: res["wordings"][w]["prompt_len"]) if band else
               min(res["wordings"], key=lambda w: abs(res["wordings"][w]["acc"] - 0.2)))
    rendered = tok.apply_chat_template(messages(wording, sel[0]), add_generation_prompt=True, tokenize=False)
    res["wording"] = dict(key=wording, system=WORDINGS[wording][0], user=WORDINGS[wording][1], example=rendered)
    say(f"chosen wording {wording}: {WORDINGS[wording]!r}")
    say("rendered prompt: " + repr(rendered))
    if args.wordings_only:
        return finish(res, gen, args)

    # 2. base
    t = time.perf_counter()
    base_sel = gen(sel, wording)
    t_sel = time.perf_counter() - t
    if args.skip_base_test:  # a continuation run: the base test accuracy is known from the first run
        base_test, t_test = dict(acc=float("nan"), correct=[], truncated=None), t_sel * len(test) / len(sel)
    else:
        t = time.perf_counter()
        base_test = gen(test, wording)
        t_test = time.perf_counter() - t
    res["base"] = dict(sel_acc=base_sel["acc"], test_acc=base_test["acc"], sel_s=round(t_sel, 2),
                       test_s=round(t_test, 2), sel_per_op=per_op(sel, base_sel["correct"]),
                       test_per_op=per_op(test, base_test["correct"]), truncated_test=base_test["truncated"])
    say(f"base: sel {base_sel['acc']:.3f} ({t_sel:.1f}s for {len(sel)}), test {base_test['acc']:.3f} "
        f"({t_test:.1f}s for {len(test)}) per-op {per_op(test, base_test['correct'])}")

    # 3. candidates
    params = [p for p in model.parameters()]
    base_w = [p.detach().clone() for p in params]

    def perturb(seed, sigma):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in params:
                p.add_(sigma * torch.randn_like(p, generator=g))

    def restore():
        with torch.no_grad():
            for p, w in zip(params, base_w):
                p.copy_(w)

    sigmas = [float(s) for s in args.sigmas.split(",")]
    rows = {sigma: [] for sigma in sigmas}
    t_noise = t_gen = c_gen = 0.0
    n_done = 0
    # leave time for the test phase: top_k test-set evaluations per sigma, each about as long as the base one
    reserve = t_test * args.top_k * len(sigmas) * 1.1
    # candidate i of every sigma in turn (same seed = same direction at each scale), so a budget cut-off
    # leaves equal counts per sigma
    for i in range(args.n_cands):
        if time.perf_counter() - T0 > args.budget_s - reserve:
            say(f"budget reached after {i} candidates per sigma (reserving {reserve:.0f}s for the test phase)")
            break
        for sigma in sigmas:
            t = time.perf_counter()
            perturb(1000 + args.cand_offset + i, sigma)
            t_noise += time.perf_counter() - t
            t, c = time.perf_counter(), time.process_time()
            r = gen(sel, wording)
            dt = time.perf_counter() - t
            t_gen += dt
            c_gen += time.process_time() - c
            t = time.perf_counter()
            restore()
            t_noise += time.perf_counter() - t
            n_done += 1
            rows[sigma].append(dict(seed=1000 + args.cand_offset + i, sel_acc=r["acc"], truncated=r["truncated"]))
            say(f"sigma={sigma:g} cand {args.cand_offset + i:2d}: sel {r['acc']:.3f} (base {base_sel['acc']:.3f}) "
                f"[generation {dt:.1f}s, load {os.getloadavg()[0]:.1f}]"
                f"{' truncated ' + str(r['truncated']) if r['truncated'] else ''}")
    res["candidates"] = {}
    for sigma in sigmas:
        accs = [r["sel_acc"] for r in rows[sigma]]
        n = max(1, len(accs))
        stats = dict(n=len(accs), beat=sum(a > base_sel["acc"] for a in accs) / n,
                     tie=sum(a == base_sel["acc"] for a in accs) / n, mean=sum(accs) / n,
                     max=max(accs, default=None), min=min(accs, default=None), rows=rows[sigma])
        res["candidates"][str(sigma)] = stats
        say(f"sigma={sigma:g}: {stats['beat']:.0%} of {len(accs)} beat base on selection, {stats['tie']:.0%} tie; "
            f"sel acc mean {stats['mean']:.3f} min {stats['min']} max {stats['max']}")
    res["timing"] = dict(per_candidate_noise_s=round(t_noise / max(1, n_done), 2),
                         per_candidate_gen_s=round(t_gen / max(1, n_done), 2),
                         per_candidate_gen_cpu_s=round(c_gen / max(1, n_done), 2), n_sel=len(sel))
    say(f"per candidate: noise+restore {t_noise / max(1, n_done):.2f}s, generation of {len(sel)} prompts "
        f"{t_gen / max(1, n_done):.2f}s wall ({c_gen / max(1, n_done):.2f}s CPU)")

    # 4. top-k on test, and their majority vote
    res["top_k_test"] = {}
    for sigma in sigmas:
        best = sorted(res["candidates"][str(sigma)]["rows"], key=lambda r: -r["sel_acc"])[:args.top_k]
        out = []
        answers = []
        for r in best:
            if time.perf_counter() - T0 > args.budget_s + 60:
                say("budget reached in the test phase")
                break
            perturb(r["seed"], sigma)
            rt = gen(test, wording)
            restore()
            answers.append(rt["answers"])
            out.append(dict(seed=r["seed"], sel_acc=r["sel_acc"], test_acc=rt["acc"]))
            say(f"sigma={sigma:g} seed {r['seed']}: sel {r['sel_acc']:.3f} -> test {rt['acc']:.3f} "
                f"(base test {base_test['acc']:.3f})")
        vote = None
        if answers:
            voted = []
            for j, p in enumerate(test):
                keys = [normalize(a[j]) for a in answers]  # experts in rank order; None abstains
                counts = collections.Counter(k for k in keys if k is not None)
                if not counts:
                    voted.append(False)
                    continue
                top = max(counts.values())
                pick = next(k for k in keys if k is not None and counts[k] == top)  # ties: best-ranked expert
                voted.append(check(answers[keys.index(pick)][j], p))
            vote = sum(voted) / len(voted)
            say(f"sigma={sigma:g}: majority vote of top-{len(answers)} on test {vote:.3f}")
        res["top_k_test"][str(sigma)] = dict(candidates=out, vote_acc=vote)

    return finish(res, gen, args)


def finish(res: dict, gen: Generator, args: argparse.Namespace) -> int:
    res["total_s"] = round(time.perf_counter() - T0, 1)
    res["gen_calls"], res["gen_s"] = gen.n_calls, round(gen.seconds, 1)
    res["loadavg_end"] = os.getloadavg()
    say(f"done in {res['total_s']}s ({gen.n_calls} generate calls, {gen.seconds:.0f}s generating)")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
