# Two entry points for a fresh machine: `make demo` and `make test` (both set everything up first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export YOLO_OFFLINE ?= true
export YOLO_VERBOSE ?= false
SHARED ?= ../shared

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v ffmpeg >/dev/null || { echo "installing ffmpeg (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq ffmpeg >/dev/null; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: setup
	mkdir -p out
	$(BIN)/vqp image $(SHARED)/data/kodak out/kodak --match-quality 50
	$(BIN)/vqp encode $(SHARED)/data/video/vtest_pets2009_480x360.avi out/vtest.mp4 --frames 150 --compare

test: setup
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) out
