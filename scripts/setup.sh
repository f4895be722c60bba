#!/usr/bin/env bash
# Installs the Debian packages rill needs to build and test. Idempotent: packages already present are
# left alone, so re-running costs one dpkg query. Needs root (or sudo) only when something is missing.
# Arguments name optional extras to install as well (scripts/lint.sh passes clang-tidy).
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  nlohmann-json3-dev   # JSON: config.json, safetensors headers, CLI output
  libcli11-dev         # command-line parsing
  libgtest-dev         # unit tests (GoogleTest + CTest)
  libbenchmark-dev     # micro-benchmarks (Google Benchmark)
  libpcre2-dev         # tokenizer pre-tokenization regexes (Unicode properties, JIT)
  libutf8proc-dev      # Unicode NFC normalization (Qwen2 tokenizers)
  libboost-dev         # Asio and Beast (header-only): the HTTP server of rill serve
  libcpp-httplib-dev   # an HTTP client for the server tests and the load benchmark
  gnuplot-nox          # benchmark plots (bench/serve_load --plot)
  curl                 # examples and the serve shutdown test
)

# Node.js and npm for the end-to-end tests with the official `openai` npm client; a node that is already
# installed (from any source) is kept.
command -v node >/dev/null 2>&1 || packages+=(nodejs npm)
packages+=("$@")

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

echo "setup: installing ${missing[*]}"
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
