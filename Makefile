# finetunerd — one top-level Makefile. Objects in build/, -MMD -MP dependencies,
# pkg-config for every library, quiet unless V=1.
#
#   make            build/finetunerd, build/finetuner, build/libfinetuner.{a,so}
#   make deps       install what is missing with apt (non-interactive)
#   make test       build and run every Criterion test binary
#   make asan       the same tests under ASan+UBSan (build-asan/)
#   make demo       the main job: Fashion-MNIST through the daemon
#   make bench      benchmarks, printed as ratios to an sgemm floor
#   make fuzz       every libFuzzer target for FUZZ_SECONDS (default 20) each (build-fuzz/)
#   make load       load test of the daemon for LOAD_SECONDS (default 20); build/load.json

CC      ?= gcc
BUILD   ?= build
PKGS    := libmicrohttpd jansson sqlite3 openblas libcurl zlib libcrypto
OPT     ?= -O2 -g
SAN     ?=
CFLAGS  := $(OPT) $(SAN) -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -Wall -Wextra -Wshadow \
           -fPIC -Icommon -Iserver -Iclient -Itests
CFLAGS  += $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -lpthread
TEST_LDLIBS := $(shell pkg-config --libs criterion 2>/dev/null)

ifeq ($(V),1)
Q :=
else
Q := @
endif

COMMON_SRC := $(wildcard common/*.c)
SERVER_SRC := $(filter-out server/main.c,$(wildcard server/*.c))
CLIENT_LIB_SRC := $(filter-out client/cli.c,$(wildcard client/*.c))
TEST_SUPPORT_SRC := $(wildcard tests/support/*.c)
TEST_SRC   := $(wildcard tests/*/test_*.c)

COMMON_OBJ := $(COMMON_SRC:%.c=$(BUILD)/%.o)
SERVER_OBJ := $(SERVER_SRC:%.c=$(BUILD)/%.o)
CLIENT_LIB_OBJ := $(CLIENT_LIB_SRC:%.c=$(BUILD)/%.o)
TEST_SUPPORT_OBJ := $(TEST_SUPPORT_SRC:%.c=$(BUILD)/%.o)
TEST_BIN   := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
BENCH_SRC  := $(wildcard tests/bench/bench_*.c)
BENCH_BIN  := $(patsubst tests/bench/%.c,$(BUILD)/%,$(BENCH_SRC))

.PHONY: all deps test asan demo bench bench-quality load clean format-check fuzz fuzz-targets
all: $(BUILD)/finetunerd $(BUILD)/finetuner $(BUILD)/libfinetuner.a $(BUILD)/libfinetuner.so

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libftcommon.a: $(COMMON_OBJ)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/libftserver.a: $(SERVER_OBJ)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/finetunerd: $(BUILD)/server/main.o $(BUILD)/libftserver.a $(BUILD)/libftcommon.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/libfinetuner.a: $(CLIENT_LIB_OBJ)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/libfinetuner.so: $(CLIENT_LIB_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(SAN) -shared -o $@ $^ $(LDLIBS)

$(BUILD)/finetuner: $(BUILD)/client/cli.o $(BUILD)/libfinetuner.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# One binary per tests/<area>/test_<name>.c, linked with everything it may need.
$(BUILD)/tests/%: $(BUILD)/tests/%.o $(TEST_SUPPORT_OBJ) $(BUILD)/libftserver.a $(BUILD)/libfinetuner.a $(BUILD)/libftcommon.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) $(TEST_LDLIBS)

# Benchmarks: tests/bench/bench_<name>.c -> build/bench_<name> (not run by make test).
$(BUILD)/bench_%: $(BUILD)/tests/bench/bench_%.o $(BUILD)/libftserver.a $(BUILD)/libftcommon.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

tests: $(TEST_BIN) all

# Fuzz targets: tests/fuzz/fuzz_<name>.c -> $(BUILD)/fuzz_<name> (libFuzzer; build with `make
# fuzz`, which sets CC=clang and the sanitizers). The multipart target wraps ft_api_handle to
# check what server/http.c collected before the real handler runs.
FUZZ_SRC   := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_NAMES := $(patsubst tests/fuzz/fuzz_%.c,%,$(FUZZ_SRC))
$(BUILD)/fuzz_multipart: FUZZ_LDFLAGS := -Wl,--wrap=ft_api_handle
$(BUILD)/fuzz_%: $(BUILD)/tests/fuzz/fuzz_%.o $(BUILD)/libftserver.a $(BUILD)/libftcommon.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS) $(FUZZ_LDFLAGS)

fuzz-targets: $(patsubst %,$(BUILD)/fuzz_%,$(FUZZ_NAMES))

# keep the test objects (they are intermediate files of the pattern rule above)
.SECONDARY:

# deps: install what is missing with apt (non-interactive); nothing when all is there.
DEB_PKGS := build-essential libmicrohttpd-dev libjansson-dev libsqlite3-dev libopenblas-dev \
            libcriterion-dev libcurl4-openssl-dev zlib1g-dev libssl-dev pkg-config dataset-fashion-mnist curl
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

FUZZ_DEB_PKGS := clang libclang-rt-dev

# test: build first (after deps, so pkg-config sees the libraries), then run every binary.
test: deps
	$(Q)$(MAKE) --no-print-directory tests
	$(Q)BUILD=$(BUILD) sh tests/run.sh $(TEST_BIN)

asan: deps
	$(Q)$(MAKE) --no-print-directory BUILD=build-asan OPT="-O1 -g" \
	  SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" tests
	$(Q)BUILD=build-asan ASAN=1 sh tests/run.sh $(patsubst $(BUILD)/%,build-asan/%,$(TEST_BIN))

demo: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)sh deploy/demo.sh

# bench: issue 5's speed benchmark (tests/bench/bench_speed.c): training, evaluation and the
# daemon as ratios to an sgemm floor measured in the same run; wrk (apt) drives the daemon.
# One table on stdout, the same as JSON in build/bench.json; BENCH_REPS=5 repetitions.
bench: deps
	@dpkg-query -W -f='$${Status}' wrk 2>/dev/null | grep -q "install ok installed" || { \
	  echo "installing: wrk"; SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq wrk; }
	$(Q)$(MAKE) --no-print-directory all $(BUILD)/bench_speed
	$(Q)$(BUILD)/bench_speed

# load: issue 4's load test (tests/load/load.sh): while a Fashion-MNIST run trains, wrk polls
# run status, metrics and the run list, curl clients follow the logstream and runs are submitted
# and canceled, for LOAD_SECONDS; one table (requests/s, p50, p99, errors per endpoint), the same
# as JSON in build/load.json; fails on any error. wrk comes from apt when missing.
LOAD_SECONDS ?= 20
load: deps
	@dpkg-query -W -f='$${Status}' wrk 2>/dev/null | grep -q "install ok installed" || { \
	  echo "installing: wrk"; SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq wrk; }
	$(Q)$(MAKE) --no-print-directory all
	$(Q)BIN=$(BUILD) LOAD_SECONDS=$(LOAD_SECONDS) LOAD_JSON=$(BUILD)/load.json sh tests/load/load.sh

# Quality on Fashion-MNIST through the real training loop (minutes; issue 3's figures).
bench-quality: deps
	$(Q)$(MAKE) --no-print-directory $(BUILD)/bench_quality
	$(Q)$(BUILD)/bench_quality $(RECIPE)

# fuzz: clang from Debian (installed when missing), every target for FUZZ_SECONDS on its seed
# corpus tests/fuzz/corpus/<name>/ (kept read-only: new inputs go to a temporary directory);
# fails on any crash, leak, sanitizer report or timeout (tests/fuzz/run.sh).
FUZZ_SECONDS ?= 20
fuzz: deps
	@missing=""; for p in $(FUZZ_DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	$(Q)$(MAKE) --no-print-directory BUILD=build-fuzz CC=clang OPT="-O1 -g" \
	  SAN="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
	  fuzz-targets
	$(Q)sh tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_NAMES)

clean:
	rm -rf build build-asan build-fuzz

format-check:
	clang-format --dry-run --Werror common/*.[ch] server/*.[ch] client/*.[ch]

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
