# warren: build, test, install. `make test` is the whole suite (what .ci/run calls).
PREFIX ?= /usr/local
DEBIAN_PACKAGES = busybox-static uidmap acl attr libcap2-bin e2fsprogs crun runc casync \
	skopeo umoci nginx-light tmux zstd systemd debootstrap hyperfine podman jq \
	gcc libc6-dev binutils containerd docker.io systemd-container nftables passt slirp4netns \
	docker-registry apache2-utils fuse-overlayfs
CARGO ?= cargo
# Release binaries are static-pie: glibc linked in, still position-independent. A start
# then maps and relocates one file instead of four (dynamic loader, libc, libm, libgcc_s):
# ~0.4 ms less CPU per container start. The explicit --target keeps the flag off proc
# macros, which cannot be static. RELR (`-z pack-relative-relocs`, glibc >= 2.36) packs
# the ~17,000 relative relocations of a static-pie into a few KB that the start applies
# from a bitmap: less to read and fewer pages touched before main.
HOST := $(shell rustc -vV | sed -n 's/^host: //p')
BIN := target/$(HOST)/release

.PHONY: all release bindir deps test lint install demo

all: release

release:
	RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs" $(CARGO) build --release --target $(HOST) --bins

# Where `make release` puts the binaries (for scripts).
bindir:
	@echo $(BIN)

# Installs the Debian packages the tests drive (as root, only what is missing).
deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# The quick start: build, import the embedded busybox image, run a container from it.
demo: deps release
	$(BIN)/warren run --rm --image busybox -- \
		sh -c 'set -- $$(cat /proc/self/uid_map); echo "hello from $$(hostname): root here is host uid $$2"; id'

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --lib --no-default-features -- -D warnings

# The integration tests drive the release binaries (what `make install` ships), found
# through WARREN_TEST_BIN_DIR; library and unit tests use cargo's test build. The static
# check first: a call to a weak undefined glibc symbol would crash them all.
test: deps lint release
	sh tests/check-static.sh $(BIN)
	WARREN_TEST_BIN_DIR=$(CURDIR)/$(BIN) $(CARGO) test --all-targets -- --test-threads=4
	sh tests/release-smoke.sh $(BIN)
	# The library's unit tests again as an unprivileged user: planning code needs no root.
	sh tests/unprivileged.sh "$$($(CARGO) test --lib --no-run 2>&1 | grep -o 'target/debug/deps/warren-[0-9a-f]*')"

install: all
	install -Dm755 $(BIN)/warren $(DESTDIR)$(PREFIX)/bin/warren
	install -Dm755 $(BIN)/shift-own $(DESTDIR)$(PREFIX)/bin/shift-own
	install -Dm755 $(BIN)/shift-mount $(DESTDIR)$(PREFIX)/bin/shift-mount
	# Setuid root, like newuidmap: rootless containers share one image through it.
	install -Dm4755 -o root -g root $(BIN)/warren-mount $(DESTDIR)$(PREFIX)/bin/warren-mount
	install -Dm644 systemd/container@.service $(DESTDIR)/etc/systemd/system/container@.service
	install -Dm644 systemd/shift-mount@.service $(DESTDIR)/etc/systemd/system/shift-mount@.service
	install -d $(DESTDIR)/etc/warren/containers $(DESTDIR)/etc/warren/shift-mount
	install -Dm644 README.md $(DESTDIR)$(PREFIX)/share/doc/warren/README.md
	install -d $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	$(BIN)/warren man --dir $(DESTDIR)$(PREFIX)/share/man/man1
	$(BIN)/warren completions bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/warren
	$(BIN)/warren completions zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_warren
	$(BIN)/warren completions fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/warren.fish
