# The one way to run things: developers and CI use these targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

export LONGDOC_HOST ?= 127.0.0.1
export LONGDOC_PORT ?= 8000
export LONGDOC_DATA_DIR ?= ./.longdoc

.PHONY: setup services test-services browser run test lint bench bench-throughput clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

services:
	scripts/ensure-services.sh redis

# The tests also run the service on RabbitMQ (tests/store); they start their own S3 server.
test-services:
	scripts/ensure-services.sh redis postgresql rabbitmq

# The playground test drives Debian's chromium through the pip playwright package, which must
# never download a browser of its own (the registries are all that can be reached here).
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
browser:
	@command -v chromium >/dev/null || { \
		test "$$(id -u)" = 0 || { echo "chromium missing: apt-get install chromium" >&2; exit 1; }; \
		apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Starts the API, the workers, beat and (without a model API key) the sandbox model.
# Loopback webhook targets and upload URLs are allowed here so local servers can be used.
run: setup services
	LONGDOC_WEBHOOK_ALLOWED_NETWORKS="$${LONGDOC_WEBHOOK_ALLOWED_NETWORKS:-127.0.0.0/8,::1/128}" \
	LONGDOC_URL_ALLOWED_NETWORKS="$${LONGDOC_URL_ALLOWED_NETWORKS:-127.0.0.0/8,::1/128}" \
		$(BIN)/longdoc run

# Test files are spread over TEST_WORKERS processes (a file's tests stay together: its stack
# is started once); TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: setup test-services browser
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=10

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

# Benchmarks (results in docs/benchmarks.md); the throughput ones take a few minutes each
# (overhead and latency once per backend: local files or S3, Redis or RabbitMQ), then fairness,
# hostile requests, how soon a waiting client hears a job ended, recovery and the cost of metrics.
bench: setup test-services
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.planning
	$(BIN)/python -m bench.answers

bench-throughput: setup test-services
	$(BIN)/python -m bench.throughput overhead
	$(BIN)/python -m bench.throughput latency
	$(BIN)/python -m bench.throughput ratelimit
	$(BIN)/python -m bench.throughput s3read
	$(BIN)/python -m bench.fairness
	$(BIN)/python -m bench.hostile
	$(BIN)/python -m bench.waiting
	$(BIN)/python -m bench.recovery kill
	$(BIN)/python -m bench.recovery sweep
	$(BIN)/python -m bench.metrics

clean:
	rm -rf $(VENV) .longdoc .pytest_cache .ruff_cache
