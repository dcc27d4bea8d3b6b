"""
Compare the compression ratio (bytes per token) of our tokenizer with GPT-2's and GPT-4's.
GPT-2/GPT-4 encodings come from tiktoken and need a download on first use; offline they are
skipped with a message and only our tokenizer's figures are shown.

    python -m scripts.tok_eval
"""

import socket

from nanochat.tokenizer import RustBPETokenizer, get_tokenizer

GREEN, RED, RESET = "\033[92m", "\033[91m", "\033[0m"

news_text = r"""
(Geneva, 14 March) The regional water authority announced on Tuesday that the new treatment
plant on the northern shore will begin operating in the autumn, two months ahead of schedule.
The facility, built at a cost of 48.5 million francs, is expected to supply clean drinking water
to roughly 120,000 households. "This is the largest investment in our network since 1987," said
the authority's director, adding that tariffs would remain unchanged for at least three years.
""".strip()

korean_text = r"""
서울시는 내년부터 시내 모든 공공도서관의 운영 시간을 밤 10시까지 연장한다고 밝혔다.
시 관계자는 "직장인과 학생들이 퇴근과 하교 후에도 편하게 도서관을 이용할 수 있도록 하기 위한 조치"라고 설명했다.
""".strip()

code_text = r"""
class Counter:
    def __init__(self):
        self.counts = {}

    def add(self, items):
        for item in items:
            self.counts[item] = self.counts.get(item, 0) + 1
        return self

    def most_common(self, n=3):
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

print(Counter().add("mississippi").most_common())
""".strip()

math_text = r"""
\begin{theorem}
For every integer $n \ge 1$, $\sum_{k=1}^{n} k^3 = \left(\frac{n(n+1)}{2}\right)^2$.
\end{theorem}
\begin{proof}
By induction on $n$. For $n = 1$ both sides equal $1$. Assume the identity for $n$; then
$\sum_{k=1}^{n+1} k^3 = \frac{n^2(n+1)^2}{4} + (n+1)^3 = \frac{(n+1)^2 (n^2 + 4n + 4)}{4}
= \left(\frac{(n+1)(n+2)}{2}\right)^2$, which is the claim for $n+1$.
\end{proof}
""".strip()

science_text = r"""
Glycolysis converts one molecule of glucose into two molecules of pyruvate in the cytosol,
yielding a net gain of two ATP and two NADH. Under aerobic conditions pyruvate enters the
mitochondrial matrix, where the pyruvate dehydrogenase complex decarboxylates it to acetyl-CoA,
which feeds the citric acid cycle; the reduced cofactors then drive oxidative phosphorylation.
""".strip()


def corpus_samples():
    """First row group of the first train shard and of the val shard, when shards exist."""
    from nanochat.dataset import list_parquet_files, parquets_iter_batched
    if not list_parquet_files():
        print("No pretraining shards found: skipping the fwe-train / fwe-val rows")
        return []
    samples = [("fwe-train", "\n".join(next(parquets_iter_batched(split="train"), [])))]
    val_docs = next(parquets_iter_batched(split="val"), [])
    if val_docs:
        samples.append(("fwe-val", "\n".join(val_docs)))
    return samples


def load_baseline(tiktoken_name, label):
    """A pretrained tiktoken encoding, or None (with a message) when it can't be downloaded."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)  # tiktoken's download has no timeout of its own
    try:
        return RustBPETokenizer.from_pretrained(tiktoken_name)
    except Exception as e:  # any failure means: skip this baseline
        print(f"Skipping the {label} comparison: could not load tiktoken encoding {tiktoken_name!r} "
              f"({type(e).__name__}: {str(e)[:120]}). It is downloaded on first use; set TIKTOKEN_CACHE_DIR "
              "to a folder holding a cached copy to compare offline.")
        return None
    finally:
        socket.setdefaulttimeout(previous)


def measure(tokenizer, texts):
    results = {}
    for name, text in texts:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text, f"round-trip failed on {name}"
        n_bytes = len(text.encode("utf-8"))
        results[name] = {"bytes": n_bytes, "tokens": len(ids), "ratio": n_bytes / max(1, len(ids))}
    return results


def print_comparison(label, baseline, ours, texts):
    print(f"\nComparison with {label}:")
    print("=" * 95)
    print(f"{'Text Type':<10} {'Bytes':<8} {label:<15} {'Ours':<15} {'Relative':<12} {'Better':<10}")
    print(f"{'':<10} {'':<8} {'Tokens':<7} {'Ratio':<7} {'Tokens':<7} {'Ratio':<7} {'Diff %':<12}")
    print("-" * 95)
    for name, _ in texts:
        b, o = baseline[name], ours[name]
        diff = (b["tokens"] - o["tokens"]) / b["tokens"] * 100
        better = "Ours" if o["ratio"] > b["ratio"] else label if b["ratio"] > o["ratio"] else "Tie"
        b_color, o_color = (RED, GREEN) if better == "Ours" else (GREEN, RED) if better == label else ("", "")
        print(f"{name:<10} {b['bytes']:<8} "
              f"{b_color}{b['tokens']:<7}{RESET} {b_color}{b['ratio']:<7.2f}{RESET} "
              f"{o_color}{o['tokens']:<7}{RESET} {o_color}{o['ratio']:<7.2f}{RESET} "
              f"{o_color}{diff:+7.1f}%{RESET}     {better}")


def markdown_table(label, baseline, ours, texts):
    lines = [f"### Comparison with {label}", "",
             f"| Text Type | Bytes | {label} Tokens | {label} Ratio | Ours Tokens | Ours Ratio | Relative Diff % |",
             "|-----------|-------|--------------|--------------|-------------|------------|-----------------|"]
    for name, _ in texts:
        b, o = baseline[name], ours[name]
        diff = (b["tokens"] - o["tokens"]) / b["tokens"] * 100
        lines.append(f"| {name} | {b['bytes']} | {b['tokens']} | {b['ratio']:.2f} | "
                     f"{o['tokens']} | {o['ratio']:.2f} | {diff:+.1f}% |")
    return "\n".join(lines) + "\n"


def main():
    texts = [("news", news_text), ("korean", korean_text), ("code", code_text),
             ("math", math_text), ("science", science_text)] + corpus_samples()
    ours_tok = get_tokenizer()
    ours = measure(ours_tok, texts)
    baselines = [(label, load_baseline(name, label)) for label, name in (("GPT-2", "gpt2"), ("GPT-4", "cl100k_base"))]

    print("\nVocab sizes:")
    for label, tok in baselines:
        if tok is not None:
            print(f"{label}: {tok.get_vocab_size()}")
    print(f"Ours: {ours_tok.get_vocab_size()}")

    print("\nOur tokenizer:")
    print(f"{'Text Type':<10} {'Bytes':<8} {'Tokens':<8} {'Ratio':<7}")
    for name, o in ours.items():
        print(f"{name:<10} {o['bytes']:<8} {o['tokens']:<8} {o['ratio']:<7.2f}")

    report_lines = []
    for label, tok in baselines:
        if tok is None:
            report_lines.append(f"### Comparison with {label}\n\nskipped: the {label} encoding could not be loaded\n")
            continue
        baseline = measure(tok, texts)
        print_comparison(label, baseline, ours, texts)
        report_lines.append(markdown_table(label, baseline, ours, texts))
    if all(tok is None for _, tok in baselines):
        rows = "\n".join(f"| {name} | {o['bytes']} | {o['tokens']} | {o['ratio']:.2f} |" for name, o in ours.items())
        report_lines.append("### Ours\n\n| Text Type | Bytes | Ours Tokens | Ours Ratio |\n"
                            "|-----------|-------|-------------|------------|\n" + rows + "\n")

    from nanochat.report import get_report
    get_report().log(section="Tokenizer evaluation", data=["\n".join(report_lines)])


if __name__ == "__main__":
    main()
