#!/usr/bin/env python3
"""Byte-level BPE tokenizers trained by the `tokenizers` package: the independent reference for the C++ encoder.

For each configuration (two corpora x vocabularies of 512 and 8192, in GPT-2 and Llama-3 styles) it trains a
tokenizer with added special tokens (and a few non-special added tokens), saves `NAME/tokenizer.json`, and
saves the ids `tokenizers` produces for whole corpora as raw little-endian uint32 files:
  NAME/<corpus>.ids          encode(whole corpus file as one string, add_special_tokens=False)
  NAME/<corpus>.special.txt  the corpus with special tokens inserted between paragraphs (written for C++)
  NAME/<corpus>.special.ids  encode(that text, add_special_tokens=False)
plus NAME/cases.json: short edge-case strings with ids (with and without the post-processor) and decode().
A stamp file makes a second run with the same inputs a no-op.
"""
import argparse
import hashlib
import json
import os

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import AddedToken

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# The o200k-style split (case-aware words with attached contractions), as newer byte-level tokenizers use.
O200K_PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                 r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<eos>", "<pad>", "<|begin_of_text|>", "<|im_start|>", "<|im_end|>"]

CORPORA = {
    "tinyshakespeare": ["tinyshakespeare.txt"],
    "wikitext2": ["wikitext-2-valid.txt", "wikitext-2-test.txt"],
}

# name: (training corpus, vocab size, style, extra options)
CONFIGS = {
    "shakespeare_512_gpt2": ("tinyshakespeare", 512, "gpt2", {}),
    "shakespeare_8192_llama3": ("tinyshakespeare", 8192, "llama3", {"bos_template": True}),
    "wikitext2_512_gpt2_prefix": ("wikitext2", 512, "gpt2", {"add_prefix_space": True}),
    "wikitext2_8192_llama3": ("wikitext2", 8192, "llama3", {"nfc": True}),
    "shakespeare_8192_o200k": ("tinyshakespeare", 8192, "o200k", {}),
}

EDGE_CASES = [
    "", " ", "  ", "\n", "\n\n\n", "a", "hello world", "  hello  world  \n\n  x", "Hello,World!!",
    "don't I'M you'LL they've", "1234567 89 3.14159", "tab\tseparated\tvalues\r\nCRLF line\r\n",
    "<eos>", "<eos><eos>", "a<eos>b", " <eos> ", "<pad>hello<eos>", "<|im_start|>user\nhi<|im_end|>",
    "thee and thou, thee", "naïve café résumé", "Ünïcödé ŝtrïng — “quotes” … ‘single’", "日本語のテキスト",
    "emoji 😀👍🏽 mixed", "\u00a0non-breaking\u2003em-space\u3000ideographic", "e\u0301 composed vs é",
    "ﬁ ligature ＡＢＣ fullwidth", "CamelCaseWord HTTPServer don'T WE'LL iPhone", "path/to/file\n/x",
    "\u0085nel\u2028line\u2029para\u180emongolian\u200bzwsp\ufeffbom", "x" * 3000, " " * 100 + "y", "@-@ = = Heading = =\n",
]


def train(name, corpus_files, vocab, style, opts):
    bpe = models.BPE()
    tok = Tokenizer(bpe)
    if style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=opts.get("add_prefix_space", False))
    else:
        pattern = LLAMA3_PATTERN if style == "llama3" else O200K_PATTERN
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
    if opts.get("nfc"):
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train(corpus_files, trainer)
    # Non-special added tokens: one matched on normalized text, one on raw text; rstrip (which swallows the
    # spaces after the token, so decode(encode(x)) != x by design) only where the prefix space already breaks
    # the round trip.
    rstrip = opts.get("add_prefix_space", False)
    tok.add_tokens([AddedToken("thee", normalized=True), AddedToken(" thou", normalized=False, rstrip=rstrip)])
    if opts.get("bos_template"):
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    spec = json.loads(tok.to_str())
    if style == "llama3":
        spec["model"]["ignore_merges"] = True  # as Llama-3 ships it: whole words in the vocab skip merging
    return Tokenizer.from_str(json.dumps(spec)), spec


# Small tokenizers exercising the other pipeline pieces (Split behaviours, String patterns, invert, Digits,
# normalizers) on the edge cases and corpus excerpts only: name -> (pre_tokenizer, normalizer).
def variant_specs():
    bl = lambda use_regex: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    return {
        "variant_removed": (pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\s+"), "removed"), bl(False)]), None),
        "variant_merged_previous_digits": (pre_tokenizers.Sequence([
            pre_tokenizers.Split(" ", "merged_with_previous"), pre_tokenizers.Digits(individual_digits=True),
            bl(False)]), None),
        "variant_merged_next": (pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"[,.!?;:]"), "merged_with_next"), bl(True)]), None),
        "variant_contiguous_invert_digits": (pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"\p{L}+"), "contiguous", invert=True),
            pre_tokenizers.Digits(individual_digits=False), bl(False)]), None),
        "variant_normalizers": (bl(True), normalizers.Sequence([
            normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace("``", '"'),
            normalizers.Replace(Regex(r"@-@"), "-"), normalizers.Strip(), normalizers.Prepend("^")])),
    }


def train_variant(pre_tokenizer, normalizer, text):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS[:2], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    tok.add_tokens([AddedToken("thee", normalized=True)])
    return tok


def write_cases(tok, texts, path):
    cases = []
    for text in texts:
        plain = tok.encode(text, add_special_tokens=False).ids
        cases.append({"text": text, "ids": plain, "ids_with_special": tok.encode(text).ids,
                      "decoded": tok.decode(plain, skip_special_tokens=False)})
    meta = {"vocab_size_with_added": tok.get_vocab_size(with_added_tokens=True),
            "specials": {s: tok.token_to_id(s) for s in SPECIALS if tok.token_to_id(s) is not None},
            "cases": cases}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False)


def with_specials(text):
    """The corpus with special tokens placed between paragraphs and inside some lines."""
    paragraphs = text.split("\n\n")
    out = []
    for i, p in enumerate(paragraphs):
        out.append(p)
        out.append(["<eos>", "<pad><eos>", "<|im_start|>", " <|im_end|> "][i % 4])
    return "\n\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    here = os.path.abspath(__file__)
    stamp_key = hashlib.sha256(open(here, "rb").read()).hexdigest()
    stamp = os.path.join(args.out, ".stamp")
    if os.path.exists(stamp) and open(stamp).read() == stamp_key:
        print("reference tokenizers up to date")
        return
    os.makedirs(args.out, exist_ok=True)
    corpora = {}
    for cname, files in CORPORA.items():
        corpora[cname] = "".join(open(os.path.join(args.data, f), encoding="utf-8", newline="").read() for f in files)
    for name, (corpus, vocab, style, opts) in CONFIGS.items():
        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        tok, spec = train(name, [os.path.join(args.data, f) for f in CORPORA[corpus]], vocab, style, opts)
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(spec, f, ensure_ascii=False, indent=2)
        for cname, text in corpora.items():
            ids = tok.encode(text, add_special_tokens=False).ids
            np.asarray(ids, dtype="<u4").tofile(os.path.join(d, cname + ".ids"))
            special_text = with_specials(text)
            with open(os.path.join(d, cname + ".special.txt"), "w", encoding="utf-8", newline="") as f:
                f.write(special_text)
            ids = tok.encode(special_text, add_special_tokens=False).ids
            np.asarray(ids, dtype="<u4").tofile(os.path.join(d, cname + ".special.ids"))
        cases = []
        for text in EDGE_CASES:
            plain = tok.encode(text, add_special_tokens=False).ids
            cases.append({"text": text, "ids": plain, "ids_with_special": tok.encode(text).ids,
                          "decoded": tok.decode(plain, skip_special_tokens=False)})
        meta = {"vocab_size_with_added": tok.get_vocab_size(with_added_tokens=True),
                "specials": {s: tok.token_to_id(s) for s in SPECIALS}, "cases": cases}
        with open(os.path.join(d, "cases.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, ensure_ascii=False)
        print(f"{name}: vocab {tok.get_vocab_size()} saved")
    excerpts = [corpora["tinyshakespeare"][:20000], corpora["wikitext2"][:20000]]
    for name, (pre, norm) in variant_specs().items():
        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        tok = train_variant(pre, norm, corpora["tinyshakespeare"][:200000])
        tok.save(os.path.join(d, "tokenizer.json"))
        write_cases(tok, EDGE_CASES + excerpts, os.path.join(d, "cases.json"))
        print(f"{name}: vocab {tok.get_vocab_size()} saved")
    with open(stamp, "w") as f:
        f.write(stamp_key)


if __name__ == "__main__":
    main()
