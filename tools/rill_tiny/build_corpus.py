#!/usr/bin/env python3
"""Builds rill-tiny's training corpus from freely licensed English text: ../shared/data/text plus text extracted
from Debian packages (downloaded with `apt-get download`, unpacked with `dpkg-deb -x`; nothing is installed).

Writes OUT/corpus.jsonl.gz: one JSON object per document, {"source": ..., "text": ...}, in a fixed order, and
OUT/corpus-sources.json: each source's package, version, sha256 of the .deb, licence, documents and bytes.

Usage: tools/rill_tiny/build_corpus.py --shared ../shared --out .device/rill-tiny [--extra]

--extra adds 70 MB more (the Linux kernel's Documentation/, the GNU Collaborative International Dictionary
of English, Vim's and Git's manuals): the attention-sink experiments of issue #6 need a corpus several times
larger than rill-tiny's, so that a model can train long enough to form sinks without memorising its text.
"""
import argparse
import glob
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from read_rdata import lazyload  # noqa: E402

# package -> licence of the text we take from it (from each package's debian/copyright)
PACKAGES = {
    "r-cran-janeaustenr": "Jane Austen's six novels: public domain texts (package: MIT)",
    "bible-kjv-text": "King James Version of the Bible: public domain",
    "bible-kjv": "the program that decodes bible-kjv-text's data (GPL-2+); only run, no text taken",
    "fortunes": "BSD fortune cookie files: BSD licence (4.4BSD)",
    "fortunes-min": "BSD fortune cookie files: BSD licence (4.4BSD)",
    "python3.11-doc": "Python 3.11 documentation (reStructuredText sources): PSF License / BSD-0-clause for docs",
    "perl-doc": "Perl 5.36 core documentation (POD): GPL-1+ or Artistic",
}
EXTRA_PACKAGES = {
    "linux-doc-6.1": "Linux kernel Documentation/ (reStructuredText and text sources): GPL-2, some files dual "
                     "GPL-2 / CC-BY-4.0 (SPDX lines in the files)",
    "dict-gcide": "GNU Collaborative International Dictionary of English 0.48 (Webster 1913 + WordNet): GPL-3+",
    "vim-runtime": "Vim 9.0 reference manual (doc/*.txt): Vim licence (GPL-compatible)",
    "git-doc": "Git 2.39 manuals (AsciiDoc sources): GPL-2",
}


def paragraphs(lines):
    """Hard-wrapped lines -> paragraphs, each one line (blank lines separate paragraphs)."""
    out, cur = [], []
    for line in lines:
        line = line.strip()
        if line:
            cur.append(line)
        elif cur:
            out.append(" ".join(cur))
            cur = []
    if cur:
        out.append(" ".join(cur))
    return out


def austen(root):
    docs = []
    data = lazyload(f"{root}/usr/lib/R/site-library/janeaustenr/data/Rdata")
    for name in sorted(data):
        lines = [l or "" for l in data[name]]
        # a document per chapter
        chapter = []
        for line in lines:
            if re.match(r"^\s*(CHAPTER|Chapter)\s+[0-9IVXLC]+", line) and chapter:
                docs.append("\n\n".join(paragraphs(chapter)))
                chapter = []
            chapter.append(line)
        docs.append("\n\n".join(paragraphs(chapter)))
    return [d for d in docs if d.strip()]


def kjv(root):
    out = subprocess.run([f"{root}/usr/bin/bible", "-p", f"{root}/usr/lib", "Gen1:1-Rev22:21"],
                         capture_output=True, text=True, check=True, env={"COLUMNS": "100000"}).stdout
    docs, verses, title = [], [], None
    for line in out.splitlines():
        m = re.match(r"^\s+\d+\s+(.*)$", line)
        if m:
            verses.append(m.group(1).strip())
        elif line.strip() and not line.startswith(" "):
            if verses:
                docs.append(title + "\n\n" + "\n".join(verses))
            title, verses = line.strip(), []
        elif line.strip() and verses:  # a wrapped verse
            verses[-1] += " " + line.strip()
    if verses:
        docs.append(title + "\n\n" + "\n".join(verses))
    return docs


def fortunes(root):
    docs = []
    for path in sorted(glob.glob(f"{root}/usr/share/games/fortunes/*")):
        if os.path.splitext(path)[1] in (".dat", ".u8") or os.path.islink(path) or os.path.isdir(path):
            continue
        text = open(path, encoding="utf-8", errors="replace").read()
        cookies = [f.strip("\n") for f in re.split(r"^%$", text, flags=re.M) if f.strip()]
        # 50 cookies to a document, '%' lines between them as in the files: one document per cookie would make
        # most document starts in the corpus a fortune cookie, and the model would answer every fresh prompt
        # with one.
        docs += ["\n%\n".join(cookies[i:i + 50]) for i in range(0, len(cookies), 50)]
    return docs


def python_docs(root):
    docs = []
    for path in sorted(glob.glob(f"{root}/usr/share/doc/python3.11/html/_sources/**/*.rst.txt", recursive=True)):
        if "/whatsnew/changelog" in path:
            continue  # issue numbers and commit-style lines, not prose
        docs.append(open(path, encoding="utf-8", errors="replace").read())
    return docs


def perl_docs(root):
    docs = []
    for path in sorted(glob.glob(f"{root}/usr/share/perl/*/pod/*.pod")):
        out = subprocess.run(["pod2text", "--loose", "--utf8", path], capture_output=True, text=True, errors="replace")
        if out.returncode == 0 and out.stdout.strip():
            docs.append(out.stdout)
    return docs


def linux_docs(root):
    docs = []
    base = glob.glob(f"{root}/usr/share/doc/linux-doc-*/Documentation")[0]
    for path in sorted(glob.glob(f"{base}/**/*.gz", recursive=True)):
        name = path[len(base) + 1:-3]
        if not (name.endswith(".rst") or name.endswith(".txt") or "." not in os.path.basename(name)):
            continue  # scripts, device-tree YAML, images, the Sphinx configuration
        if name.startswith(("translations/", "ABI/", "devicetree/bindings/")) or os.path.basename(name) == "dontdiff":
            continue  # other languages; one-line ABI stanzas and bindings, not prose
        text = gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
        if len(text) > 200:
            docs.append(text)
    return docs


def gcide(root):
    """Dictionary entries (a headword line, then its indented definition), markup for sources dropped, 100
    entries to a document."""
    text = gzip.open(f"{root}/usr/share/dictd/gcide.dict.dz", "rt", encoding="utf-8", errors="replace").read()
    entries, cur = [], []
    for line in text.splitlines():
        if re.fullmatch(r"\s*\[[^\]]*(Webster|PJC|WordNet|Century|Chambers|RN|JC|NRT|MW)[^\]]*\]\s*", line):
            continue  # provenance notes: [1913 Webster], [PJC], ...
        if line and not line[0].isspace() and cur:
            entries.append("\n".join(cur).strip())
            cur = []
        cur.append(line.rstrip())
    entries.append("\n".join(cur).strip())
    entries = [re.sub(r"\n{3,}", "\n\n", e) for e in entries if e and not e.startswith("00-database")]
    return ["\n\n".join(entries[i:i + 100]) for i in range(0, len(entries), 100)]


def text_files(pattern):
    """Each file matching the glob pattern (in sorted order) as one document."""
    return [open(p, encoding="utf-8", errors="replace").read() for p in sorted(glob.glob(pattern, recursive=True))]


def shared_text(shared):
    docs = []
    shakespeare = open(f"{shared}/data/text/tinyshakespeare.txt", encoding="utf-8").read()
    speeches = shakespeare.split("\n\n")
    for i in range(0, len(speeches), 40):  # documents of 40 speeches
        docs.append(("tinyshakespeare", "\n\n".join(speeches[i:i + 40])))
    stories = open(f"{shared}/data/text/tinystories-valid-excerpt.txt", encoding="utf-8").read()
    docs += [("tinystories-excerpt", s.strip()) for s in stories.split("\n") if s.strip()]
    return docs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--out", default=".device/rill-tiny")
    ap.add_argument("--extra", action="store_true", help="add the EXTRA_PACKAGES sources (70 MB)")
    args = ap.parse_args()
    packages = {**PACKAGES, **(EXTRA_PACKAGES if args.extra else {})}
    os.makedirs(args.out, exist_ok=True)
    sources = {}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", *packages], cwd=tmp, check=True, capture_output=True)
        root = f"{tmp}/root"
        for deb in sorted(glob.glob(f"{tmp}/*.deb")):
            subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
            name, version = os.path.basename(deb).split("_")[:2]
            sources[name] = {"version": version.replace("%3a", ":"), "licence": packages[name],
                             "sha256": hashlib.sha256(open(deb, "rb").read()).hexdigest()}
        docs = [("austen", d) for d in austen(root)] + [("kjv", d) for d in kjv(root)] + \
               [("fortunes", d) for d in fortunes(root)] + [("python-docs", d) for d in python_docs(root)] + \
               [("perl-docs", d) for d in perl_docs(root)] + shared_text(args.shared)
        if args.extra:
            # After the rest, in a fixed order (every 50th document overall is held out, so each source gives
            # about 2% of its documents to the validation split).
            extra = [("linux-docs", d) for d in linux_docs(root)] + [("gcide", d) for d in gcide(root)] + \
                    [("vim-docs", d) for d in text_files(f"{root}/usr/share/vim/vim*/doc/*.txt")] + \
                    [("git-docs", d) for d in text_files(f"{root}/usr/share/doc/git-doc/**/*.txt")]
            docs = docs + extra
    summary = {}
    with gzip.GzipFile(f"{args.out}/corpus.jsonl.gz", "wb", mtime=0) as f:
        for source, text in docs:
            f.write((json.dumps({"source": source, "text": text}, ensure_ascii=False) + "\n").encode())
            s = summary.setdefault(source, {"documents": 0, "bytes": 0})
            s["documents"] += 1
            s["bytes"] += len(text.encode())
    json.dump({"packages": sources, "corpus": summary, "total_bytes": sum(s["bytes"] for s in summary.values())},
              open(f"{args.out}/corpus-sources.json", "w"), indent=2)
    for k, v in summary.items():
        print(f"{k:22s} {v['documents']:7d} documents {v['bytes'] / 1e6:7.2f} MB")
    print(f"total {sum(s['bytes'] for s in summary.values()) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
