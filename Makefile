# ripple -- see README.md. `make` builds the runtime and the services;
# `make test` installs what is missing, builds and runs every test.

CC      ?= cc
BUILD   ?= build
PYTHON  ?= /usr/bin/python3
PYTEST_ARGS ?=

LLHTTP_SRC := /usr/share/llhttp
LLHTTP_INC := /usr/share/include/llhttp

WARN_CFLAGS := -std=gnu11 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
               -Wmissing-prototypes -Wwrite-strings -Wpointer-arith -Wformat=2 -fno-common
REL_CFLAGS  := -O2 -g -D_FORTIFY_SOURCE=2 -fstack-protector-strong
SAN_CFLAGS  := -O0 -g3 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
MODE_CFLAGS ?= $(REL_CFLAGS)
MODE_LDFLAGS ?=

CPPFLAGS += -Icore -I. -isystem $(LLHTTP_INC)
CFLAGS   += $(WARN_CFLAGS) $(MODE_CFLAGS) -MMD -MP
LDFLAGS  += $(MODE_LDFLAGS)
LDLIBS   += -luv -lhiredis -lcurl -ljansson -lsqlite3 -ljwt -lcrypto -luuid -lpthread -lm

CORE_SRC := $(wildcard core/*.c streams/*.c)
CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/obj/%.o)
LLHTTP_OBJ := $(BUILD)/llhttp/api.o $(BUILD)/llhttp/http.o $(BUILD)/llhttp/llhttp.o

# Every services/<name>/ with a schema.sql is a service: build/<name> from
# its .c files and its embedded schema.
SERVICES := $(patsubst services/%/schema.sql,%,$(wildcard services/*/schema.sql))
service_obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard services/$(1)/*.c)) \
              $(BUILD)/obj/gen/$(1)_schema.o

UNIT_SRC := $(wildcard tests/unit/*.c)
UNIT_OBJ := $(UNIT_SRC:%.c=$(BUILD)/obj/%.o)

.PHONY: all deps test unit e2e check-san bench demo up clean format format-check
all: $(BUILD)/libcore.a $(addprefix $(BUILD)/,$(SERVICES))

# Third-party llhttp, compiled from Debian's node-llhttp sources (never copied).
$(BUILD)/llhttp/%.o: $(LLHTTP_SRC)/%.c
	@mkdir -p $(@D)
	$(CC) -O2 -g $(filter -fsanitize% -fno-sanitize%,$(MODE_CFLAGS)) -isystem $(LLHTTP_INC) -c $< -o $@

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/gen/%_schema.c: services/%/schema.sql scripts/embed-sql
	@mkdir -p $(@D)
	scripts/embed-sql $*_schema_sql $< > $@

$(BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/libcore.a: $(CORE_OBJ) $(LLHTTP_OBJ)
	rm -f $@
	ar rcs $@ $^

define service_rule
$(BUILD)/$(1): $(call service_obj,$(1)) $(BUILD)/libcore.a
	$$(CC) $$(CFLAGS) $$(LDFLAGS) -o $$@ $(call service_obj,$(1)) $(BUILD)/libcore.a $$(LDLIBS)
endef
$(foreach s,$(SERVICES),$(eval $(call service_rule,$(s))))

$(BUILD)/unit_tests: $(UNIT_OBJ) $(BUILD)/libcore.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(UNIT_OBJ) $(BUILD)/libcore.a $(LDLIBS) -lcriterion

# Installs the Debian packages of DESIGN.md §3 when one is missing.
deps:
	@scripts/install-deps --quiet

unit: $(BUILD)/unit_tests
	$(BUILD)/unit_tests --jobs 2

e2e: all
	RIPPLE_BIN=$(abspath $(BUILD)) $(PYTHON) -m pytest -q tests/e2e $(PYTEST_ARGS)

test: deps
	$(MAKE) all $(BUILD)/unit_tests
	$(MAKE) unit
	$(MAKE) e2e

# The same suites under ASan + UBSan, in a build of their own.
check-san: deps
	$(MAKE) BUILD=build/san MODE_CFLAGS="$(SAN_CFLAGS)" MODE_LDFLAGS="-fsanitize=address,undefined" \
		all build/san/unit_tests
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		$(MAKE) BUILD=build/san MODE_CFLAGS="$(SAN_CFLAGS)" MODE_LDFLAGS="-fsanitize=address,undefined" unit e2e

bench: deps all
	scripts/bench

demo: deps all
	scripts/demo

up: deps all
	scripts/up

FORMAT_FILES = $(wildcard core/*.[ch] services/*/*.[ch] streams/*.[ch] tests/unit/*.[ch])
format:
	clang-format -i $(FORMAT_FILES)

format-check:
	clang-format --dry-run -Werror $(FORMAT_FILES)

clean:
	rm -rf build

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
