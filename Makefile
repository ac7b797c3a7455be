# zapfarm: `make demo` runs a short real campaign; `make test` runs the whole suite.
# Both set up what they need on a fresh Debian machine (see deploy/setup-host.sh).

.PHONY: demo test lint clean

demo:
	deploy/setup-host.sh demo
	.venv/bin/farm demo

test:
	deploy/setup-host.sh test
	.venv/bin/ruff check farm workers tests bench migrations
	FARM_TEST_REQUIRE_POSTGRES=1 FARM_TEST_REQUIRE_BROWSER=1 .venv/bin/pytest

lint:
	.venv/bin/ruff check farm workers tests bench migrations

clean:
	rm -rf .cache .venv .pytest_cache .ruff_cache guest/build
