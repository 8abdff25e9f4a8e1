#!/bin/sh
# Installs what the test suite needs beyond the Rust toolchain, only when it is
# missing, so a second run takes a second:
#   - junitparser: the JUnit consumer the run tests validate reports with;
#   - docker-registry, skopeo, apache2-utils: the OCI image tests run a real
#     registry (the CNCF distribution registry) on 127.0.0.1, push images with
#     skopeo (and make OCI/docker archives with it) and write bcrypt htpasswd
#     files; umoci comes along for building test layouts by hand when
#     debugging (the tests write their layouts themselves);
#   - openssl: the token-auth test signs its JWTs with it;
#   - e2fsprogs: mkfs.ext4 turns an image's tree into an ext4 file;
#   - libssl-dev, pkg-config: the registry client links OpenSSL (native-tls);
#   - debootstrap: guest/image/build-python-oci.sh builds the example image;
#   - slurm-wlm, munge: scripts/local-slurm.sh runs a one-node Slurm cluster
#     (slurmctld, slurmd, the client commands, and munged for their
#     authentication) for the Slurm executor tests.
set -eu

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import junitparser' 2>/dev/null || "$PYTHON" -m pip install -q junitparser

missing=""
for pair in docker-registry:docker-registry skopeo:skopeo umoci:umoci \
    htpasswd:apache2-utils mkfs.ext4:e2fsprogs openssl:openssl \
    slurmctld:slurm-wlm slurmd:slurm-wlm sbatch:slurm-wlm munged:munge; do
    tool=${pair%%:*}
    pkg=${pair#*:}
    case " $missing " in *" $pkg "*) continue ;; esac
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ] && [ ! -x "/usr/bin/$tool" ]; then
        missing="$missing $pkg"
    fi
done
[ -f /usr/include/openssl/ssl.h ] || missing="$missing libssl-dev"
[ -z "$missing" ] && exit 0

# The docker-registry, munge, slurmctld and slurmd packages start their
# services from their postinst; in a container without an init that fails and
# leaves the package half-configured (scripts/local-slurm.sh starts its own
# daemons with its own configuration instead).
# policy-rc.d exit 101 tells invoke-rc.d not to start anything; it is removed
# again only if this script put it there.
policy=/usr/sbin/policy-rc.d
own_policy=no
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=yes
fi
trap '[ "$own_policy" = yes ] && rm -f "$policy"' EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086 # word splitting of the package list is intended
apt-get install -y -q --no-install-recommends $missing
