# clipsift: `make demo` and `make test` work on a fresh machine (Python 3.10+, Java 17, Maven).
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
JARS := .jars
DELTA_VERSION := 4.4.0
DEPENDENCY_PLUGIN := org.apache.maven.plugins:maven-dependency-plugin:3.6.1

export PYSPARK_PYTHON := $(abspath $(PYTHON))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PYTHON))
export CLIPSIFT_JARS := $(abspath $(JARS))
export HF_HUB_OFFLINE := 1

.PHONY: setup test-data demo test bench bench-data bench-emoji lint dist clean

# Debian packages of real test data: tuxpaint stamps with captions, scikit-image's photos, Fashion-MNIST,
# WordNet 3.0 (the text-based filter); and headless Chromium with its driver, which open clipsift report's pages.
TEST_DATA_PACKAGES := tuxpaint-stamps-default python3-skimage dataset-fashion-mnist wordnet-base chromium chromium-driver
TEST_DATA_MARKERS := /usr/share/tuxpaint/stamps /usr/lib/python3/dist-packages/skimage/data /usr/share/datasets/fashion-mnist /usr/share/wordnet /usr/bin/chromium /usr/bin/chromedriver

setup: $(VENV)/.installed $(JARS)/.fetched test-data

$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e ".[spark,dev,gpu,text]"
	touch $@

# The delta-spark wheel has no jars: fetch the matching ones from Maven Central.
$(JARS)/.fetched:
	mkdir -p $(JARS)
	mvn -q $(DEPENDENCY_PLUGIN):copy -Dartifact=io.delta:delta-spark_2.13:$(DELTA_VERSION) -DoutputDirectory=$(JARS)
	mvn -q $(DEPENDENCY_PLUGIN):copy -Dartifact=io.delta:delta-storage:$(DELTA_VERSION) -DoutputDirectory=$(JARS)
	touch $@

# Installs the packages when a marker folder is missing (needs root or sudo; apt-get only).
test-data:
	@missing=0; for d in $(TEST_DATA_MARKERS); do test -e $$d || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -q --no-install-recommends $(TEST_DATA_PACKAGES) >/dev/null \
	  || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q --no-install-recommends $(TEST_DATA_PACKAGES) >/dev/null; } \
	  || echo "make: could not install $(TEST_DATA_PACKAGES); the tests that read real images will fail"; \
	fi

demo: setup
	$(PYTHON) -m clipsift demo --out demo-output

test: setup
	$(PYTHON) -m pytest tests -p no:cacheprovider -q --durations=25

bench: setup
	$(PYTHON) -m tests.benchmarks.run --out bench-output

# The emoji benchmark's data (docs/eval-emoji.md): npm tarballs into .cache/emoji; EmojiOne PNGs and Noto from Debian.
EMOJI_PACKAGES := ruby-gemojione fonts-noto-color-emoji
bench-data: setup
	@test -d /usr/share/rubygems-integration/all/gems/gemojione-3.3.0/assets/png || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -q --no-install-recommends $(EMOJI_PACKAGES) >/dev/null \
	  || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q --no-install-recommends $(EMOJI_PACKAGES) >/dev/null; }; }
	$(PYTHON) -m tests.benchmarks.bench_eval_emoji --fetch-only --cache .cache/emoji

# The emoji benchmark end to end (about 20 minutes on 2 cores): embed, score, select, eval.
bench-emoji: bench-data
	$(PYTHON) -m tests.benchmarks.bench_eval_emoji --cache .cache/emoji --out bench-output/emoji

# dist/clipsift.zip: the package for executors (spark-submit --py-files; PySpark puts .zip files on their path).
dist: setup
	rm -rf dist && $(PYTHON) -m pip wheel -q --no-deps -w dist .
	cp dist/clipsift-*.whl dist/clipsift.zip

lint: setup
	$(VENV)/bin/ruff check clipsift/__init__.py clipsift/__main__.py udfs jobs tests
	$(VENV)/bin/mypy -p clipsift

clean:
	rm -rf demo-output bench-output spark-warehouse metastore_db derby.log dist build
