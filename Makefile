# selfsup: the two commands of the README.
#   make demo   create .venv, make sure Fashion-MNIST is present, pretrain + evaluate SimCLR
#   make test   create .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build is installed first and pinned, so that `pip install -e .` does not pull
# a newer (multi-GB) build through the open version range of pyproject.toml.
TORCH ?= 2.14.1
TORCHVISION ?= 0.29.1
RUN_DIR ?= runs/demo
MINUTES ?= 5

.PHONY: venv data demo test bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "torch==$(TORCH)" "torchvision==$(TORCHVISION)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

data: venv
	bash scripts/ensure-fashion-mnist.sh $(BIN)/selfsup

demo: venv data
	$(BIN)/selfsup demo --run-dir $(RUN_DIR) --minutes $(MINUTES)

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
