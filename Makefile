# The two commands a new machine needs: `make run` and `make test`.
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc)

.PHONY: all setup build build-asan run test test-unit fuzz clean

all: build

setup:
	scripts/setup

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo

$(ASAN_BUILD)/build.ninja:
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DIOBAND_SANITIZE=ON

build: $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

build-asan: $(ASAN_BUILD)/build.ninja
	cmake --build $(ASAN_BUILD) -j $(JOBS)

run: setup build
	scripts/run-demo

# Every test of the release build (unit, simulation, integration with real
# clients), then under ASan+UBSan the unit and simulation tests and the
# integration tests of hostile input (label "sanitized", tests/CMakeLists.txt).
test: setup build build-asan
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 600
	cd $(ASAN_BUILD) && ctest --output-on-failure -j $(JOBS) -L 'unit|sanitized' --timeout 600

test-unit: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -L unit

# libFuzzer harnesses (clang, ASan+UBSan) in build-fuzz/, each run for
# FUZZ_SECONDS (default 60) on fuzz/corpus/; FUZZ_MERGE=1 adds new coverage
# to the committed corpus. See docs/fuzzing.md.
fuzz:
	scripts/fuzz

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) build-fuzz
