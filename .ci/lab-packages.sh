#!/usr/bin/env bash
# Install everything the exprobe test lab (tests/lab/lab.py) needs, non-interactively.
# (iptables: its legacy NFQUEUE target feeds tests/lab/netem.py where the kernel
# has no sch_netem.)
#
# From a purged state, in whatever order apt configures the packages: nothing here relies
# on a file an earlier, hand-made state left behind (postfix is preseeded so that its own
# postinst writes /etc/postfix/main.cf before inn2's postinst runs newaliases).
#
# Idempotent: when every package is already installed and configured and
# python-snap7 is importable, it does nothing but say so (set LAB_FORCE_APT=1 to
# run apt anyway). It also repairs the state a plain `apt-get install inn2` leaves
# on a host without an FQDN (inn2 half-configured; lab-notes pitfall 1).
set -euo pipefail

PACKAGES=(nftables iproute2 nmap dovecot-imapd dovecot-pop3d postfix slapd ldap-utils
          inn2 samba openssl tdb-tools tmux prometheus iptables
          # systemd: systemd-analyze checks the sample units (tests/test_monitoring_examples.py);
          # libsasl2-modules: postfix's SASL client/server plugins on a minimal Debian.
          systemd libsasl2-modules util-linux
          # tests/lab/hoplab.py: sysctl (procps, not in a minimal Debian); traceroute and
          # mtr-tiny: test_hops_lab.py and bench/trace_vs_traceroute.py compare with them.
          procps traceroute mtr-tiny
          # nginx: the TLS front, pool and middleboxes of the web lab (tests/lab/weblab.py);
          # libnginx-mod-stream: the modern Exchange lab's TCP pass-through VIP (tests/lab/xlab.py).
          nginx libnginx-mod-stream
          # dnsmasq-base: the two DNS views of the Autodiscover lab (tests/lab/dnslab.py);
          # the binary alone, no system service.
          dnsmasq-base
          # tests/lab/adlab.py: a Samba AD DC (Kerberos, GC, SMB); kinit and smbclient agree.
          samba-ad-dc samba-ad-provision krb5-user smbclient winbind)
SNAP7_VERSION="${LAB_SNAP7_VERSION:-3.3.0}"
APT_OPTS=(-y -q -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef
          -o Dpkg::Options::=--force-confold --no-install-recommends)
# The pyenv interpreter that runs the tests (not /usr/bin/python3).
PY="${LAB_PYTHON:-python3}"

export DEBIAN_FRONTEND=noninteractive
log() { printf 'lab-packages: %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "must run as root"; exit 1
fi

missing_packages() {
    local p st
    for p in "${PACKAGES[@]}"; do
        st=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
        # "ii " = installed and configured; anything else (absent, iF, iU, ...) needs work.
        [ "${st:0:2}" = "ii" ] || printf '%s\n' "$p"
    done
}

# Pitfall 1: inn2's postinst runs innconfval, which fails when the host has no
# FQDN and inn.conf sets no domain. Give inn.conf a domain and a pathhost.
fix_inn_conf() {
    local f=/etc/news/inn.conf
    [ -f "$f" ] || return 0
    if ! grep -qE '^domain:' "$f"; then
        if grep -qE '^#domain:' "$f"; then
            sed -i -E 's/^#domain:.*/domain:                      lab.test/' "$f"
        else
            printf 'domain:                      lab.test\n' >>"$f"
        fi
        log "inn2 fix-up: set domain: lab.test in $f"
    fi
    if grep -qE '^pathhost:[[:space:]]*server\.example\.net' "$f"; then
        sed -i -E 's/^pathhost:.*/pathhost:                    news.lab.test/' "$f"
        log "inn2 fix-up: set pathhost: news.lab.test in $f"
    fi
}

# Postfix installed but without /etc/postfix/main.cf (a "No configuration" install, or
# /etc/postfix removed by hand): newaliases, which inn2's postinst runs, then fails with
# "open /etc/postfix/main.cf: No such file or directory". Put Debian's default back.
fix_postfix_main_cf() {
    [ -e /etc/postfix/main.cf ] && return 0
    [ -x /usr/sbin/postconf ] || return 0
    mkdir -p /etc/postfix
    if [ -f /usr/share/postfix/main.cf.debian ]; then
        cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf
    else
        : >/etc/postfix/main.cf
    fi
    postconf -e 'myhostname = mail.lab.test' 'mydestination = localhost' \
        'inet_interfaces = loopback-only' 'alias_maps = hash:/etc/aliases' \
        'alias_database = hash:/etc/aliases'
    log "postfix fix-up: wrote /etc/postfix/main.cf (it was missing)"
}

# Keep postinst scripts from starting daemons on the host (there is no init here;
# the lab starts its own daemons in a namespace). Only if no policy exists already.
POLICY=/usr/sbin/policy-rc.d
POLICY_CREATED=0
cleanup() { if [ "$POLICY_CREATED" = 1 ]; then rm -f "$POLICY"; fi; }
trap cleanup EXIT

# Also when every package is installed: a postfix without main.cf breaks the next apt run.
fix_postfix_main_cf
mapfile -t MISSING < <(missing_packages)
if [ "${#MISSING[@]}" -gt 0 ] || [ "${LAB_FORCE_APT:-0}" = 1 ]; then
    log "to install or repair: ${MISSING[*]:-(forced)}"
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY"; chmod 755 "$POLICY"; POLICY_CREATED=1
    fi
    # postfix and slapd ask debconf questions; the lab writes its own configs.
    debconf-set-selections <<'SEL'
postfix postfix/main_mailer_type select Local only
postfix postfix/mailname string mail.lab.test
postfix postfix/destinations string localhost
slapd slapd/no_configuration boolean true
slapd shared/organization string lab.test
slapd slapd/domain string lab.test
krb5-config krb5-config/default_realm string LAB.TEST
krb5-config krb5-config/add_servers_realm string LAB.TEST
krb5-config krb5-config/add_servers boolean false
krb5-config krb5-config/kerberos_servers string localhost
krb5-config krb5-config/admin_server string localhost
krb5-config krb5-config/read_conf boolean true
SEL
    # A previous run may have left inn2 unpacked but unconfigured: repair first,
    # otherwise apt refuses to do anything until `dpkg --configure -a` succeeds.
    fix_inn_conf
    fix_postfix_main_cf
    dpkg --configure -a --force-confdef --force-confold || true
    apt-get -q -o DPkg::Lock::Timeout=300 update
    if ! apt-get install "${APT_OPTS[@]}" "${PACKAGES[@]}"; then
        log "apt-get install failed; applying the fix-ups and retrying the configuration"
        fix_inn_conf
        fix_postfix_main_cf
        dpkg --configure -a --force-confdef --force-confold
        apt-get install "${APT_OPTS[@]}" "${PACKAGES[@]}"
    fi
    fix_inn_conf
    mapfile -t STILL < <(missing_packages)
    if [ "${#STILL[@]}" -gt 0 ]; then
        log "still not configured: ${STILL[*]}"; exit 1
    fi
else
    log "all Debian packages already installed"
fi

if "$PY" -c 'import importlib.metadata as m, sys; sys.exit(m.version("python-snap7") != sys.argv[1])' \
        "$SNAP7_VERSION" 2>/dev/null; then
    log "python-snap7 $SNAP7_VERSION already installed for $("$PY" -c 'import sys; print(sys.executable)')"
else
    # The machine's pip config names local indexes that may not exist (pitfall 10).
    "$PY" -m pip install -q "python-snap7==$SNAP7_VERSION" 2>&1 | grep -v "is ignored" >&2 || true
    "$PY" -c 'import snap7.server' || { log "python-snap7 did not install"; exit 1; }
fi
log "done"
