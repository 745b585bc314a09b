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

# RIPPLE_SHORT_NAMES: the tree says container_of and ARRAY_SIZE (ripple/common.h).
CPPFLAGS += -Iinclude -Icore -I. -isystem $(LLHTTP_INC) -DRIPPLE_SHORT_NAMES
CFLAGS   += $(WARN_CFLAGS) $(MODE_CFLAGS) -MMD -MP
LDFLAGS  += $(MODE_LDFLAGS)
LDLIBS   += -luv -lhiredis -lcurl -ljansson -lsqlite3 -ljwt -lcrypto -lpthread -lm
# The services' allocator (README "Dependencies"): tcmalloc from gperftools,
# linked into the executables only (never into the library or the tests).
# --no-as-needed because nothing calls it by name: it replaces malloc by
# coming before libc. `make MALLOC_LIBS=` builds on glibc's malloc, as the
# sanitizer, valgrind and fuzz builds do (they bring their own).
# Without the package (a machine set up before it was added: `make deps`
# installs it), make says so and builds on glibc's.
ifeq ($(origin MALLOC_LIBS),undefined)
ifeq ($(shell pkg-config --exists libtcmalloc_minimal 2>/dev/null && echo y),y)
MALLOC_LIBS := -Wl,--push-state,--no-as-needed -ltcmalloc_minimal -Wl,--pop-state
else
$(warning tcmalloc is not installed (libgoogle-perftools-dev): building on glibc's malloc; `make deps` installs it)
MALLOC_LIBS :=
endif
endif

CORE_SRC := $(wildcard core/*.c streams/*.c)
CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/gen/openapi_assets.o
LLHTTP_OBJ := $(BUILD)/llhttp/api.o $(BUILD)/llhttp/http.o $(BUILD)/llhttp/llhttp.o

# Every services/<name>/ is a module (core/module.h): its .c files, and its
# schema.sql embedded when it has one. build/ripple hosts any set of them
# (`build/ripple all`); build/<name> is a host of that one module.
MODULES := $(patsubst services/%/,%,$(sort $(dir $(wildcard services/*/*.c))))
module_obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard services/$(1)/*.c)) \
             $(if $(wildcard services/$(1)/schema.sql),$(BUILD)/obj/gen/$(1)_schema.o) \
             $(if $(wildcard services/$(1)/assets),$(BUILD)/obj/gen/$(1)_assets.o)
# A module's assets/ (its page, scripts), plus the files ASSETS_EXTRA_<name>
# lists, are embedded by scripts/embed-assets as <name>_assets[], declared in
# services/<name>/<name>.h: a binary serves them without any installed file.
ASSETS_EXTRA_console := scripts/dlq.d/replay.lua
module_assets = $(sort $(wildcard services/$(1)/assets/*)) $(ASSETS_EXTRA_$(1))
ALL_MODULE_OBJ = $(foreach m,$(MODULES),$(call module_obj,$(m)))

UNIT_SRC := $(wildcard tests/unit/*.c tests/common/*.c)
UNIT_OBJ := $(UNIT_SRC:%.c=$(BUILD)/obj/%.o)

.PHONY: FORCE all deps catalog test unit e2e check-san check-valgrind bench demo up clean format format-check \
        fuzz fuzz-build fuzz-replay compose-test
all: $(BUILD)/libcore.a $(BUILD)/ripple $(addprefix $(BUILD)/,$(MODULES))

# Third-party llhttp, compiled from Debian's node-llhttp sources (never copied).
$(BUILD)/llhttp/%.o: $(LLHTTP_SRC)/%.c
	@mkdir -p $(@D)
	$(CC) -O2 -g $(filter -fsanitize% -fno-sanitize%,$(MODE_CFLAGS)) -isystem $(LLHTTP_INC) -c $< -o $@

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/gen/%_schema.c: services/%/schema.sql scripts/embed-sql
	@mkdir -p $(@D)
	scripts/embed-sql $(subst -,_,$*)_schema_sql $< > $@

$(BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

# Every service's GET /api/docs page (core/openapi.c): core/apidocs/ and the
# renderer's files from swagger-ui-dist, pinned in tools/apidocs and
# installed by tools/apidocs/setup (scripts/install-deps runs it too; the
# Docker build gets the installed files in its context), embedded into the
# runtime like a module's assets.
APIDOCS_DIST := tools/apidocs/node_modules/swagger-ui-dist
APIDOCS_NPM := $(APIDOCS_DIST)/swagger-ui-bundle.js $(APIDOCS_DIST)/swagger-ui.css \
               $(APIDOCS_DIST)/LICENSE $(APIDOCS_DIST)/NOTICE
APIDOCS_FILES := $(sort $(wildcard core/apidocs/*)) $(APIDOCS_NPM)
$(APIDOCS_NPM) &:
	tools/apidocs/setup --quiet

$(BUILD)/gen/openapi_assets.c: scripts/embed-assets $(APIDOCS_FILES)
	@mkdir -p $(@D)
	scripts/embed-assets openapi include/ripple/openapi.h $(APIDOCS_FILES) > $@

# The version the OpenAPI documents carry (info.version).
$(BUILD)/obj/core/service.o $(BUILD)/pic/obj/core/service.o: \
	CPPFLAGS += -DRIPPLE_VERSION_STRING='"$(RIPPLE_VERSION)"'

$(BUILD)/libcore.a: $(CORE_OBJ) $(LLHTTP_OBJ)
	rm -f $@
	ar rcs $@ $^

# Generated sources (schemas, hosts' mains, embedded assets) are kept, not
# deleted as intermediates: deleted, the next make would regenerate and
# recompile them and relink every binary.
.SECONDARY:

# The list of modules, rewritten only when it changes: a module added or
# removed regenerates build/ripple's main.
$(BUILD)/gen/modules.list: FORCE
	@mkdir -p $(@D)
	@echo "$(MODULES)" | cmp -s - $@ || echo "$(MODULES)" > $@

$(BUILD)/gen/host_all.c: scripts/gen-host $(BUILD)/gen/modules.list
	@mkdir -p $(@D)
	scripts/gen-host $(MODULES) > $@

$(BUILD)/gen/host_%.c: scripts/gen-host
	@mkdir -p $(@D)
	scripts/gen-host $* > $@

# The executables' link line in a stamp each depends on: `make MALLOC_LIBS=`
# after `make` relinks them rather than keeping the other allocator.
LINK_FLAGS := $(CC) $(CFLAGS) $(LDFLAGS) $(LDLIBS) $(MALLOC_LIBS)
$(BUILD)/.link-flags: FORCE
	@mkdir -p $(@D)
	@echo '$(LINK_FLAGS)' | cmp -s - $@ || echo '$(LINK_FLAGS)' > $@

$(BUILD)/ripple: $(ALL_MODULE_OBJ) $(BUILD)/obj/gen/host_all.o $(BUILD)/libcore.a $(BUILD)/.link-flags
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(filter %.o,$^) $(BUILD)/libcore.a $(LDLIBS) $(MALLOC_LIBS)

define assets_rule
$(BUILD)/gen/$(1)_assets.c: scripts/embed-assets $(call module_assets,$(1))
	@mkdir -p $$(@D)
	scripts/embed-assets $(subst -,_,$(1)) services/$(1)/$(1).h $(call module_assets,$(1)) > $$@
endef
$(foreach m,$(MODULES),$(if $(wildcard services/$(m)/assets),$(eval $(call assets_rule,$(m)))))

define module_rule
$(BUILD)/$(1): $(call module_obj,$(1)) $(BUILD)/obj/gen/host_$(1).o $(BUILD)/libcore.a $(BUILD)/.link-flags
	$$(CC) $$(CFLAGS) $$(LDFLAGS) -o $$@ $(call module_obj,$(1)) $(BUILD)/obj/gen/host_$(1).o \
		$(BUILD)/libcore.a $$(LDLIBS) $$(MALLOC_LIBS)
endef
$(foreach m,$(MODULES),$(eval $(call module_rule,$(m))))

$(BUILD)/unit_tests: $(UNIT_OBJ) $(BUILD)/libcore.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(UNIT_OBJ) $(BUILD)/libcore.a $(LDLIBS) -lcriterion

# Installs the Debian packages of DESIGN.md §3 when one is missing.
deps:
	@scripts/install-deps --quiet

unit: $(BUILD)/unit_tests
	$(BUILD)/unit_tests --jobs 2

e2e: all browser-deps openapi-deps
	RIPPLE_MALLOC=$(if $(MALLOC_LIBS),tcmalloc,glibc) RIPPLE_REQUIRE_BROWSER=1 RIPPLE_BIN=$(abspath $(BUILD)) $(PYTHON) -m pytest -q tests/e2e \
		$(PYTEST_ARGS)

# The console's browser test (tests/e2e/test_console_browser.py): Debian's
# chromium, and playwright-core from npm pinned in tests/browser/.
.PHONY: browser-deps console-screenshot
browser-deps:
	@scripts/install-deps --quiet --with chromium
	@tests/browser/setup --quiet

# The OpenAPI linter of tests/e2e/test_openapi.py: @redocly/cli from npm,
# pinned in tests/openapi/ (node and npm from scripts/install-deps).
.PHONY: openapi-deps openapi
openapi-deps:
	@tests/openapi/setup --quiet

# docs/openapi/<module>.json: what each module serves at
# GET /api/v1/openapi.json (test_openapi fails when a committed copy differs).
openapi: all
	RIPPLE_BIN=$(abspath $(BUILD)) scripts/openapi

# Regenerates docs/console.png and docs/console-saga.png (README) from the
# browser test's screenshots.
console-screenshot: all browser-deps
	RIPPLE_REQUIRE_BROWSER=1 RIPPLE_CONSOLE_SCREENSHOT=$(abspath docs) RIPPLE_BIN=$(abspath $(BUILD)) \
		$(PYTHON) -m pytest -q tests/e2e/test_console_browser.py

test: deps
	$(MAKE) all $(BUILD)/unit_tests
	$(MAKE) unit
	$(MAKE) fuzz-replay
	$(MAKE) e2e

# The same suites under ASan + UBSan, in a build of their own.
check-san: deps
	$(MAKE) BUILD=build/san MODE_CFLAGS="$(SAN_CFLAGS)" MODE_LDFLAGS="-fsanitize=address,undefined" \
		MALLOC_LIBS= all build/san/unit_tests
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:quarantine_size_mb=32 RIPPLE_RSS_SLACK=8 \
		RIPPLE_TIME_SLACK=3 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		$(MAKE) BUILD=build/san MODE_CFLAGS="$(SAN_CFLAGS)" MODE_LDFLAGS="-fsanitize=address,undefined" \
		MALLOC_LIBS= unit e2e

# valgrind (STYLE.md §4: a -O0 -g build without sanitizers): the unit tests,
# and the users service under its e2e suites, must be clean -- any error or a
# definite/indirect leak fails. Timing bounds get RIPPLE_TIME_SLACK.
VALGRIND := valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite,indirect \
            --error-exitcode=1
check-valgrind: deps
	$(MAKE) BUILD=build/vg MODE_CFLAGS="-O0 -g" MALLOC_LIBS= all build/vg/unit_tests
	RIPPLE_TIME_SLACK=10 $(VALGRIND) --trace-children=yes build/vg/unit_tests --jobs 1
	RIPPLE_BIN=$(abspath build/vg) RIPPLE_VALGRIND=users RIPPLE_STARTUP_TIMEOUT=60 RIPPLE_TIME_SLACK=10 \
		RIPPLE_STOP_TIMEOUT=60 $(PYTHON) -m pytest -q tests/e2e/test_users.py \
		tests/e2e/test_streams.py $(PYTEST_ARGS)

# libFuzzer targets (tests/fuzz/README.md), built with clang into build/fuzz
# with core, streams and llhttp instrumented alongside. `make fuzz` runs each
# target for FUZZ_SECONDS on a scratch corpus, build/fuzz/corpus/<target>,
# seeded from tests/fuzz/corpus/<target> (which it never writes to); crashes
# land in build/fuzz/artifacts/<target>/. `make -j2 fuzz` runs two at once;
# FUZZ_TARGETS=fuzz_http picks some; FUZZ_ARGS passes libFuzzer flags.
# `make fuzz-replay` runs the committed corpora and regressions once.
FUZZ_CC      ?= clang
FUZZ_BUILD   := build/fuzz
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= $(patsubst tests/fuzz/%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_ARGS    ?=
FUZZ_CFLAGS  := -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined \
                -fno-sanitize-recover=all
FUZZ_LDFLAGS := -fsanitize=fuzzer,address,undefined
FUZZ_MAKE     = $(MAKE) BUILD=$(FUZZ_BUILD) CC=$(FUZZ_CC) MODE_CFLAGS="$(FUZZ_CFLAGS)" \
                MODE_LDFLAGS="$(FUZZ_LDFLAGS)"
# Per target: fuzz_http needs inputs past 4096 bytes to reach the body limit.
FUZZ_OPTS_fuzz_http := -max_len=8192 -dict=tests/fuzz/fuzz_http.dict
FUZZ_OPTS_fuzz_auth := -dict=tests/fuzz/fuzz_auth.dict
FUZZ_OPTS_fuzz_envelope := -dict=tests/fuzz/fuzz_envelope.dict
fuzz_inputs = tests/fuzz/corpus/$(1) $(wildcard tests/fuzz/regressions/$(1))

# The fuzz targets share tests/common (the catalog fixture of fuzz_envelope).
FUZZ_COMMON_OBJ = $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tests/common/*.c))
$(addprefix $(BUILD)/,$(FUZZ_TARGETS)): $(BUILD)/%: $(BUILD)/obj/tests/fuzz/%.o $(FUZZ_COMMON_OBJ) \
		$(BUILD)/libcore.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(FUZZ_COMMON_OBJ) $(BUILD)/libcore.a $(LDLIBS)

fuzz-build: deps
	$(FUZZ_MAKE) $(addprefix $(FUZZ_BUILD)/,$(FUZZ_TARGETS))

fuzz: $(addprefix fuzz-run-,$(FUZZ_TARGETS))

fuzz-run-%: fuzz-build
	@mkdir -p $(FUZZ_BUILD)/corpus/$* $(FUZZ_BUILD)/artifacts/$*
	$(FUZZ_BUILD)/$* -max_total_time=$(FUZZ_SECONDS) -timeout=30 -print_final_stats=1 \
		-artifact_prefix=$(FUZZ_BUILD)/artifacts/$*/ $(FUZZ_OPTS_$*) $(FUZZ_ARGS) \
		$(FUZZ_BUILD)/corpus/$* $(call fuzz_inputs,$*)

# A regression pass for `make test`: every committed input once, seconds.
fuzz-replay: $(addprefix fuzz-replay-,$(FUZZ_TARGETS))

fuzz-replay-%: fuzz-build
	$(FUZZ_BUILD)/$* -runs=0 -timeout=30 $(FUZZ_OPTS_$*) $(call fuzz_inputs,$*)

bench: deps all
	scripts/bench

# streams/README.md's catalog, generated from the modules' declarations.
catalog: all
	RIPPLE_BIN=$(abspath $(BUILD)) scripts/catalog

demo: deps all
	scripts/demo

up: deps all
	scripts/up

# The container stack for real (scripts/compose-test): a Docker engine (one
# is installed and started when none answers, as root), the base images or
# local stand-ins, the images built, the demo and a crash test in containers.
compose-test: deps
	scripts/compose-test

# ---------------------------------------------------------------------------
# ripple as a library (DESIGN.md §13): `make lib` builds it into $(BUILD)/pic,
# `make install PREFIX=... [DESTDIR=...]` installs it, `make uninstall`
# removes every file install wrote (and include/ripple/; the shared
# directories above it stay). Installed:
#   lib/libripple.a, lib/libripple.so.X.Y.Z (soname libripple.so.X) and its
#     two links: the runtime (core/, streams/), with llhttp compiled in --
#     hidden (-fvisibility=hidden, then localized in the .a), so neither the
#     .so's dynamic symbols nor the .a's globals name it, and no installed
#     header mentions it;
#   include/ripple/*.h: the public headers (core/*.h stay private);
#   lib/pkgconfig/ripple.pc: `pkg-config --cflags --libs ripple`;
#   lib/libripple-modules.a + lib/pkgconfig/ripple-modules.pc: the reference
#     modules (services/*), whose only global symbols are their descriptors
#     (<ripple/modules.h>), for a host that composes its own module with them;
#   bin/ripple-embed-sql, bin/ripple-gen-host, bin/ripple-embed-assets: the
#     tools a service's build runs (scripts/embed-sql, gen-host, embed-assets).
# The version is defined here once; the soname and the .pc files use it.
# Every object is compiled again with -fPIC in $(BUILD)/pic: the normal
# build's flags stay as they are.
# ---------------------------------------------------------------------------
RIPPLE_MAJOR := 0
RIPPLE_MINOR := 1
RIPPLE_PATCH := 0
RIPPLE_VERSION := $(RIPPLE_MAJOR).$(RIPPLE_MINOR).$(RIPPLE_PATCH)
RIPPLE_SONAME := libripple.so.$(RIPPLE_MAJOR)
RIPPLE_DYLIB := libripple.so.$(RIPPLE_VERSION)

PREFIX       ?= /usr/local
DESTDIR      ?=
BINDIR       ?= $(PREFIX)/bin
LIBDIR       ?= $(PREFIX)/lib
INCLUDEDIR   ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
INSTALL      ?= install

PIC := $(BUILD)/pic
# The Debian pkg-config names of what the runtime links (LDLIBS above).
RIPPLE_REQUIRES := libuv hiredis jansson sqlite3 libjwt libcurl libcrypto
RIPPLE_LIBS_PRIVATE := -lpthread -lm
PUBLIC_HEADERS := $(wildcard include/ripple/*.h)
RIPPLE_TOOLS := embed-sql gen-host embed-assets
LIB_OBJ := $(CORE_SRC:%.c=$(PIC)/obj/%.o) $(PIC)/obj/gen/openapi_assets.o
LIB_LLHTTP_OBJ := $(PIC)/llhttp/api.o $(PIC)/llhttp/http.o $(PIC)/llhttp/llhttp.o
MODULES_LIB_OBJ := $(patsubst $(BUILD)/obj/%,$(PIC)/obj/%,$(ALL_MODULE_OBJ))
# What the modules call themselves besides the runtime: a static archive has
# no DT_NEEDED to carry it, so ripple-modules.pc requires it publicly.
MODULES_REQUIRES := libuv jansson sqlite3 libcrypto
# The descriptors: the only globals libripple-modules.a keeps.
MODULE_SYMBOLS := $(foreach m,$(MODULES),$(subst -,_,$(m))_module)

.PHONY: lib install uninstall
lib: $(PIC)/libripple.a $(PIC)/$(RIPPLE_DYLIB) $(PIC)/libripple-modules.a

# The flags the pic objects were built with, in a stamp each depends on: a
# build with other flags (make check-san passes sanitizer flags through the
# environment) rebuilds them instead of installing a mix.
PIC_FLAGS := $(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS)
$(PIC)/.flags: FORCE
	@mkdir -p $(@D)
	@echo '$(PIC_FLAGS)' | cmp -s - $@ || echo '$(PIC_FLAGS)' > $@

$(PIC)/llhttp/%.o: $(LLHTTP_SRC)/%.c $(PIC)/.flags
	@mkdir -p $(@D)
	$(CC) -O2 -g -fPIC -fvisibility=hidden $(filter -fsanitize% -fno-sanitize%,$(MODE_CFLAGS)) \
		-isystem $(LLHTTP_INC) -c $< -o $@

$(PIC)/obj/gen/%.o: $(BUILD)/gen/%.c $(PIC)/.flags
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -fPIC -c $< -o $@

$(PIC)/obj/%.o: %.c $(PIC)/.flags
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -fPIC -c $< -o $@

# One relocatable object, in which llhttp's (hidden) symbols become local:
# a program may link its own llhttp beside libripple.a.
$(PIC)/libripple.a: $(LIB_OBJ) $(LIB_LLHTTP_OBJ)
	$(LD) -r -o $(PIC)/ripple.o $^
	objcopy --localize-hidden $(PIC)/ripple.o
	rm -f $@
	ar rcs $@ $(PIC)/ripple.o

$(PIC)/$(RIPPLE_DYLIB): $(LIB_OBJ) $(LIB_LLHTTP_OBJ)
	$(CC) -shared -Wl,-soname,$(RIPPLE_SONAME) -Wl,--no-undefined $(LDFLAGS) -o $@ $^ $(LDLIBS)
	ln -sf $(RIPPLE_DYLIB) $(PIC)/$(RIPPLE_SONAME)
	ln -sf $(RIPPLE_SONAME) $(PIC)/libripple.so

$(PIC)/libripple-modules.a: $(MODULES_LIB_OBJ)
	$(LD) -r -o $(PIC)/ripple-modules.o $^
	objcopy $(addprefix --keep-global-symbol=,$(MODULE_SYMBOLS)) $(PIC)/ripple-modules.o
	rm -f $@
	ar rcs $@ $(PIC)/ripple-modules.o

# The .pc files name PREFIX (and LIBDIR...): install writes them as it goes.
define RIPPLE_PC
prefix=$(PREFIX)
exec_prefix=$${prefix}
bindir=$(BINDIR)
libdir=$(LIBDIR)
includedir=$(INCLUDEDIR)

Name: ripple
Description: event-loop microservices over Redis streams: the runtime
Version: $(RIPPLE_VERSION)
Requires.private: $(RIPPLE_REQUIRES)
Libs: -L$${libdir} -lripple
Libs.private: $(RIPPLE_LIBS_PRIVATE)
Cflags: -I$${includedir}
endef
define RIPPLE_MODULES_PC
prefix=$(PREFIX)
libdir=$(LIBDIR)

Name: ripple-modules
Description: ripple's reference modules (users, orders, inventory, payments, console)
Version: $(RIPPLE_VERSION)
Requires: ripple = $(RIPPLE_VERSION), $(MODULES_REQUIRES)
Libs: -L$${libdir} -lripple-modules -lm
endef
export RIPPLE_PC RIPPLE_MODULES_PC

install: lib
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(PKGCONFIGDIR) \
		$(DESTDIR)$(INCLUDEDIR)/ripple
	$(INSTALL) -m 644 $(PUBLIC_HEADERS) $(DESTDIR)$(INCLUDEDIR)/ripple
	$(INSTALL) -m 644 $(PIC)/libripple.a $(PIC)/libripple-modules.a $(DESTDIR)$(LIBDIR)
	$(INSTALL) -m 755 $(PIC)/$(RIPPLE_DYLIB) $(DESTDIR)$(LIBDIR)
	ln -sf $(RIPPLE_DYLIB) $(DESTDIR)$(LIBDIR)/$(RIPPLE_SONAME)
	ln -sf $(RIPPLE_SONAME) $(DESTDIR)$(LIBDIR)/libripple.so
	printf '%s\n' "$$RIPPLE_PC" > $(DESTDIR)$(PKGCONFIGDIR)/ripple.pc
	printf '%s\n' "$$RIPPLE_MODULES_PC" > $(DESTDIR)$(PKGCONFIGDIR)/ripple-modules.pc
	$(foreach t,$(RIPPLE_TOOLS),$(INSTALL) -m 755 scripts/$(t) $(DESTDIR)$(BINDIR)/ripple-$(t);)

uninstall:
	rm -f $(addprefix $(DESTDIR)$(INCLUDEDIR)/ripple/,$(notdir $(PUBLIC_HEADERS)))
	rm -f $(addprefix $(DESTDIR)$(LIBDIR)/,libripple.a libripple-modules.a $(RIPPLE_DYLIB) \
		$(RIPPLE_SONAME) libripple.so)
	rm -f $(addprefix $(DESTDIR)$(PKGCONFIGDIR)/,ripple.pc ripple-modules.pc)
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/ripple-,$(RIPPLE_TOOLS))
	rmdir $(DESTDIR)$(INCLUDEDIR)/ripple 2>/dev/null || true

FORMAT_FILES = $(wildcard include/ripple/*.h core/*.[ch] services/*/*.[ch] streams/*.[ch] tests/unit/*.[ch] \
                          tests/fuzz/*.[ch])
format:
	clang-format -i $(FORMAT_FILES)

format-check:
	clang-format --dry-run -Werror $(FORMAT_FILES)

clean:
	rm -rf build

# This build's dependency files only (build/san and build/fuzz are builds of
# their own below build/).
-include $(shell find $(BUILD)/obj $(BUILD)/llhttp $(PIC)/obj $(PIC)/llhttp -name '*.d' 2>/dev/null)
