# `make demo` and `make test` each set up their own virtual environment on a fresh machine.
# torch is installed first as the pinned CPU build, so nothing later pulls a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test

.PHONY: demo test clean web

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $@

$(STAMP): $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	# EfficientViT-SAM's reference declares torchvision, which cannot load with this torch: no deps
	$(PY) -m pip install -q --no-deps efficientsam==1.0.0
	# SAM 2.1's reference (sam2==1.1.0) likewise, without its CUDA extension (tests compare with postprocessing off)
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --no-deps sam2==1.1.0
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/swiftsam segment assets/snowboard.jpg --box 275,15,410,409 \
		--out out/demo_masks.png --overlay out/demo_overlay.png

test: $(STAMP)
	$(PY) -m pytest -q

# the browser demo's in-browser decoder (swiftsam serve): onnxruntime-web from npm, pinned by package-lock.json
WEB := swiftsam/serve/web
web: $(WEB)/node_modules/.installed
$(WEB)/node_modules/.installed: $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund --ignore-scripts
	touch $@

clean:
	rm -rf $(VENV) .venv-demo out .pytest_cache
