# One command to set up and run the demo, one to set up and run the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel (installed from local disk on the dev/CI machines). On a CUDA box:
#   make setup TORCH="torch==2.13.0+cu130" EXTRAS=gpu,train,dev (any torch spec pip can resolve)
TORCH ?= torch==2.13.0
# Exactly one ONNX Runtime build: `cpu` (onnxruntime) or `gpu` (onnxruntime-gpu); never both, they clash.
EXTRAS ?= cpu,train,export,fleet,robot,dev
DEMO_OUT ?= demo
# `make demo WORLD=3d`: the 3D world's view pairs; agent B of the first pair (overhead ← front) is exported, with
# the pair's W and agent A's probes, and run on a short recorded video of its camera.
WORLD ?= 2d
ifeq ($(WORLD),2d)
DEMO_REPRODUCE :=
DEMO_B := agentB
DEMO_PROBES := position danger
DEMO_VIEW := oblique
DEMO_RECORD := --episodes 4 --episode-len 250
else ifeq ($(WORLD),3d)
DEMO_REPRODUCE := --world 3d
DEMO_B := front
DEMO_PROBES := position obstacle robot_pose
DEMO_VIEW := front
DEMO_RECORD := --world 3d --size 64 --episodes 2 --episode-len 150
else
$(error WORLD=$(WORLD): use WORLD=2d or WORLD=3d)
endif

.PHONY: setup browser demo test lint bench gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

# The live page's browser test drives Debian's chromium (skipped, with its reason, where it cannot be installed).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
		echo "chromium not installed: tests/test_live_page.py's browser test will be skipped"

demo: setup
	$(BIN)/jepa-edge reproduce $(DEMO_REPRODUCE) --out $(DEMO_OUT) --overwrite
	$(BIN)/jepa-edge export $(DEMO_OUT)/runs/$(DEMO_B) --postcard $(DEMO_OUT)/W_BA.postcard.safetensors \
		$(foreach p,$(DEMO_PROBES),--probe $(DEMO_OUT)/probes/agentA.$(p).probe.safetensors) \
		--out $(DEMO_OUT)/agentB.onnx --overwrite
	$(BIN)/jepa-edge world record $(DEMO_OUT)/video --view $(DEMO_VIEW) $(DEMO_RECORD) --overwrite
	$(BIN)/jepa-edge bench $(DEMO_OUT)/agentB.onnx --source $(DEMO_OUT)/video/$(DEMO_VIEW).avi \
		--torch $(DEMO_OUT)/runs/$(DEMO_B) --threads 1 --decode-threads 1 --out $(DEMO_OUT)/bench.json --overwrite
	$(BIN)/jepa-edge run $(DEMO_OUT)/agentB.onnx --source $(DEMO_OUT)/video/$(DEMO_VIEW).avi --frames 5

# One worker per core (`-n auto`, one math thread each: tests/conftest.py); idle workers steal queued tests
# (`worksteal`). Wall times on the 2-core dev host: docs/RESULTS.md. `pytest -m "not slow"` skips the
# multi-process and end-to-end tests.
test: setup browser
	$(BIN)/python -m pytest -q -n auto --dist worksteal

lint: setup
	$(BIN)/ruff check jepa_edge tests benchmarks

bench: setup
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/head_overhead.py
	$(BIN)/python benchmarks/runtime_bench.py
	$(BIN)/python benchmarks/soak.py

# On a GPU machine, with the interpreter at hand (no venv, no downloads); without a GPU: one line, exit 0.
gpu-check:
	python3 benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
