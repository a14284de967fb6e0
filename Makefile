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

.PHONY: setup demo test bench lint clean

setup: $(VENV)/.installed $(JARS)/.fetched

$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e ".[spark,dev,gpu]"
	touch $@

# The delta-spark wheel has no jars: fetch the matching ones from Maven Central.
$(JARS)/.fetched:
	mkdir -p $(JARS)
	mvn -q $(DEPENDENCY_PLUGIN):copy -Dartifact=io.delta:delta-spark_2.13:$(DELTA_VERSION) -DoutputDirectory=$(JARS)
	mvn -q $(DEPENDENCY_PLUGIN):copy -Dartifact=io.delta:delta-storage:$(DELTA_VERSION) -DoutputDirectory=$(JARS)
	touch $@

demo: setup
	$(PYTHON) -m jobs.cli demo --out demo-output

test: setup
	$(PYTHON) -m pytest tests -p no:cacheprovider -q

bench: setup
	$(PYTHON) -m tests.benchmarks.run --out bench-output

lint: setup
	$(VENV)/bin/ruff check udfs jobs tests
	$(VENV)/bin/mypy udfs jobs

clean:
	rm -rf demo-output bench-output spark-warehouse metastore_db derby.log
