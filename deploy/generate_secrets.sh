#!/usr/bin/env bash
# Create the Docker swarm secrets of BIDSflux_stack.yml (deploy/secrets.txt)
# on a swarm manager. Run it from the repository's root with .env loaded
# (set -a; . ./.env; set +a); see docs/deploy.md.
#
#   deploy/generate_secrets.sh --tls-cert FILE --tls-key FILE [--tls-ca FILE]
#   deploy/generate_secrets.sh --import DIR            # tokens from `bidsflux deploy init --secrets-dir DIR`
#   deploy/generate_secrets.sh --rotate NAME [...]     # replace existing secrets
#   deploy/generate_secrets.sh --check                 # exit 0 when every secret is there for real
#
# - Generated values are strong random strings from /dev/urandom, shown once
#   on standard output and handed to `docker secret create` on its standard
#   input: no value is written to a file, here or anywhere else.
# - A secret that exists is kept: replacing it needs --rotate NAME. Rotating
#   swaps the new value into every service that mounts the secret, without a
#   moment where a service lacks it.
# - GitLab tokens are issued by GitLab: until `bidsflux deploy init` has run,
#   gitlab_dicom_bot_token holds a random placeholder (labelled as one), which
#   --import replaces without --rotate.
# - TLS files are checked first: PEM, key matching the certificate, not
#   expired, valid for BIDSFLUX_GITLAB_HOST, BIDSFLUX_REGISTRY_HOST and
#   BIDSFLUX_S3_HOST.
#
# Exit status: 0 done, 1 something failed (each problem is reported), 2 usage.
set -euo pipefail

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
list_file="$here/secrets.txt"
label_kind="bidsflux.kind"
label_placeholder="bidsflux.placeholder"

tls_cert="" tls_key="" tls_ca="" import_dir="" check_only=no
declare -a rotate=()
declare -a problems=()

usage() {  # usage [STATUS]: the header's synopsis; on stderr unless asked for
    if [ "${1:-2}" = 0 ]; then
        sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    else
        sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    fi
    exit "${1:-2}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --tls-cert) tls_cert=${2:?--tls-cert needs a file}; shift 2 ;;
        --tls-key) tls_key=${2:?--tls-key needs a file}; shift 2 ;;
        --tls-ca) tls_ca=${2:?--tls-ca needs a file}; shift 2 ;;
        --import) import_dir=${2:?--import needs a folder}; shift 2 ;;
        --rotate) rotate+=("${2:?--rotate needs a secret name}"); shift 2 ;;
        --check) check_only=yes; shift ;;
        -h|--help) usage 0 ;;
        *) echo "generate_secrets: unknown argument: $1" >&2; usage ;;
    esac
done

# --- the list: name kind (services and what are for people and tests) ---------------------------------------
declare -a names=()
declare -A kind_of=()
while read -r name kind _; do
    case "$name" in ''|'#'*) continue ;; esac
    names+=("$name")
    kind_of[$name]=$kind
done < "$list_file"

for name in "${rotate[@]}"; do
    [ -n "${kind_of[$name]:-}" ] || { echo "generate_secrets: --rotate $name: not a secret of deploy/secrets.txt" >&2; exit 2; }
done
[ -z "$tls_ca" ] || [ -n "$tls_cert" ] || { echo "generate_secrets: --tls-ca goes with --tls-cert and --tls-key" >&2; exit 2; }
{ [ -z "$tls_cert" ] && [ -z "$tls_key" ]; } || { [ -n "$tls_cert" ] && [ -n "$tls_key" ]; } \
    || { echo "generate_secrets: give --tls-cert and --tls-key together" >&2; exit 2; }
[ -z "$import_dir" ] || [ -d "$import_dir" ] || { echo "generate_secrets: --import $import_dir: not a folder" >&2; exit 2; }

# --- random values -------------------------------------------------------------
random_chars() {  # random_chars SET LENGTH
    local value=""
    while [ ${#value} -lt "$2" ]; do
        value+=$(head -c 512 /dev/urandom | LC_ALL=C tr -dc "$1")
    done
    printf '%s' "${value:0:$2}"
}

generate() {  # generate KIND: a new value on stdout
    case "$1" in
        password) random_chars 'A-Za-z0-9' 40 ;;
        user) printf 'admin-%s' "$(random_chars 'a-z0-9' 12)" ;;
        access-key) random_chars 'A-Z0-9' 20 ;;
        gitlab) printf 'placeholder-%s' "$(random_chars 'a-z0-9' 32)" ;;
        *) return 1 ;;
    esac
}

# --- docker -------------------------------------------------------------------
is_rotating() { local n; for n in "${rotate[@]}"; do [ "$n" = "$1" ] && return 0; done; return 1; }

swarm_state=$(docker info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}' 2>/dev/null || true)
if [ "$swarm_state" != "active true" ]; then
    echo "generate_secrets: this is not a swarm manager (docker info says: ${swarm_state:-no answer});" \
         "run 'docker swarm init' first, or run this on a manager node" >&2
    exit 1
fi

declare -A exists=()
while read -r name; do
    [ -n "$name" ] && exists[$name]=1
done < <(docker secret ls --format '{{.Name}}')

placeholder() { [ "$(docker secret inspect --format "{{index .Spec.Labels \"$label_placeholder\"}}" "$1")" = "true" ]; }

create() {  # create NAME KIND PLACEHOLDER(yes|no) < value
    local labels=(--label "$label_kind=$2")
    [ "$3" = no ] || labels+=(--label "$label_placeholder=true")
    docker secret create "${labels[@]}" "$1" - >/dev/null
}

# The services that mount a secret: "service|target|uid|gid|mode" lines.
mounts_of() {
    local service
    while read -r service; do
        [ -n "$service" ] || continue
        docker service inspect --format \
            '{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}}|{{.File.Name}}|{{.File.UID}}|{{.File.GID}}|{{printf "%o" .File.Mode}}{{"\n"}}{{end}}' \
            "$service" | while IFS='|' read -r secret target uid gid mode; do
                [ "$secret" = "$1" ] && printf '%s|%s|%s|%s|%s\n' "$service" "$target" "$uid" "$gid" "$mode"
            done
    done < <(docker service ls --format '{{.Name}}')
    return 0
}

swap() {  # swap FROM TO MOUNT-LINES: every mount of FROM now mounts TO, at the same place
    local service target uid gid mode
    while IFS='|' read -r service target uid gid mode; do
        [ -n "$service" ] || continue
        docker service update --quiet --detach=false --secret-rm "$1" \
            --secret-add "source=$2,target=$target,uid=$uid,gid=$gid,mode=0$mode" "$service" >/dev/null
        echo "  $service: now uses $2"
    done <<< "$3"
}

replace() {  # replace NAME KIND PLACEHOLDER < value: in place, services included
    local name=$1 value mounts
    value=$(cat)
    if [ -n "${exists[$name.rotating]:-}" ]; then
        echo "generate_secrets: $name.rotating exists: an earlier rotation did not finish." \
             "Move the services back to $name ('docker service update --secret-rm $name.rotating" \
             "--secret-add source=$name,target=$name SERVICE'), remove $name.rotating, and run again" >&2
        return 1
    fi
    mounts=$(mounts_of "$name")
    printf '%s' "$value" | create "$name.rotating" "$2" "$3"
    swap "$name" "$name.rotating" "$mounts"
    docker secret rm "$name" >/dev/null
    printf '%s' "$value" | create "$name" "$2" "$3"
    swap "$name.rotating" "$name" "$(mounts_of "$name.rotating")"
    docker secret rm "$name.rotating" >/dev/null
}

# --- TLS files ------------------------------------------------------------------
check_tls() {
    local file host answer
    for file in "$tls_cert" "$tls_key" ${tls_ca:+"$tls_ca"}; do
        [ -r "$file" ] || { problems+=("cannot read $file"); return; }
    done
    if ! openssl x509 -in "$tls_cert" -noout 2>/dev/null; then
        problems+=("$tls_cert is not a PEM certificate"); return
    fi
    if ! openssl pkey -in "$tls_key" -noout 2>/dev/null; then
        problems+=("$tls_key is not an unencrypted PEM private key"); return
    fi
    if [ "$(openssl x509 -in "$tls_cert" -noout -pubkey | openssl sha256)" != \
         "$(openssl pkey -in "$tls_key" -pubout | openssl sha256)" ]; then
        problems+=("$tls_key is not the private key of $tls_cert")
    fi
    if ! openssl x509 -in "$tls_cert" -noout -checkend 0 >/dev/null; then
        problems+=("$tls_cert has expired")
    elif ! openssl x509 -in "$tls_cert" -noout -checkend 2592000 >/dev/null; then
        echo "warning: $tls_cert expires within 30 days" >&2
    fi
    if [ -n "$tls_ca" ] && ! openssl x509 -in "$tls_ca" -noout 2>/dev/null; then
        problems+=("$tls_ca is not a PEM certificate file")
    fi
    for host in BIDSFLUX_GITLAB_HOST BIDSFLUX_REGISTRY_HOST BIDSFLUX_S3_HOST; do
        if [ -z "${!host:-}" ]; then
            problems+=("$host is not set: load .env first (set -a; . ./.env; set +a)")
            continue
        fi
        answer=$(openssl x509 -in "$tls_cert" -noout -checkhost "${!host}")
        case "$answer" in
            *"does match"*) ;;
            *) problems+=("$tls_cert is not valid for ${!host} ($host)") ;;
        esac
    done
}

tls_file_of() {
    case "$1" in
        tls-cert) printf '%s' "$tls_cert" ;;
        tls-key) printf '%s' "$tls_key" ;;
        tls-ca) printf '%s' "${tls_ca:-$tls_cert}" ;;
    esac
}

# --- --check ----------------------------------------------------------------------
if [ "$check_only" = yes ]; then
    missing=0
    for name in "${names[@]}"; do
        if [ -z "${exists[$name]:-}" ]; then
            echo "$name: missing"; missing=1
        elif placeholder "$name"; then
            echo "$name: placeholder (run 'bidsflux deploy init', then --import)"; missing=1
        else
            echo "$name: present"
        fi
    done
    exit "$missing"
fi

# --- plan: what to create or replace, and from what --------------------------------
[ -z "$tls_cert" ] || check_tls
declare -a todo=()   # "name|action" with action create or replace
for name in "${names[@]}"; do
    kind=${kind_of[$name]}
    if [ -z "${exists[$name]:-}" ]; then
        action=create
    elif is_rotating "$name"; then
        action=replace
    elif [ "$kind" = gitlab ] && [ -n "$import_dir" ] && [ -f "$import_dir/$name" ] && placeholder "$name"; then
        action=replace
    else
        if [ "$kind" = gitlab ] && [ -n "$import_dir" ] && [ -f "$import_dir/$name" ]; then
            echo "$name: exists and holds a token; pass --rotate $name to replace it with $import_dir/$name"
        else
            echo "$name: exists, kept"
        fi
        continue
    fi
    case "$kind" in
        tls-*)
            if [ -z "$tls_cert" ]; then
                problems+=("$name: $action needs --tls-cert and --tls-key (and --tls-ca for DICOM TLS senders)")
                continue
            fi ;;
        gitlab)
            if [ "$action" = replace ] && ! { [ -n "$import_dir" ] && [ -f "$import_dir/$name" ]; }; then
                problems+=("$name: rotating needs the new token: run 'bidsflux deploy init --rotate --secrets-dir DIR', then --import DIR")
                continue
            fi ;;
    esac
    todo+=("$name|$action")
done

if [ ${#problems[@]} -gt 0 ]; then
    printf 'generate_secrets: %s\n' "${problems[@]}" >&2
    echo "generate_secrets: nothing was changed" >&2
    exit 1
fi

# --- do it ----------------------------------------------------------------------
shown=0
for item in "${todo[@]}"; do
    name=${item%|*}
    action=${item#*|}
    kind=${kind_of[$name]}
    is_placeholder=no
    case "$kind" in
        tls-*)
            value=$(cat "$(tls_file_of "$kind")")
            note="from $(tls_file_of "$kind")"
            if [ "$kind" != tls-key ]; then
                note+=", $(openssl x509 -in "$(tls_file_of "$kind")" -noout -fingerprint -sha256)"
            fi ;;
        gitlab)
            if [ -n "$import_dir" ] && [ -f "$import_dir/$name" ]; then
                value=$(tr -d '\r\n' < "$import_dir/$name")
                note="from $import_dir/$name (delete that file now)"
            else
                value=$(generate gitlab)
                is_placeholder=yes
                note="placeholder until 'bidsflux deploy init' (then --import DIR)"
            fi ;;
        *)
            value=$(generate "$kind")
            note="" ;;
    esac
    if [ "$action" = create ]; then
        printf '%s' "$value" | create "$name" "$kind" "$is_placeholder"
        echo "$name: created${note:+ ($note)}"
    else
        echo "$name: replacing${note:+ ($note)}"
        printf '%s' "$value" | replace "$name" "$kind" "$is_placeholder"
        echo "$name: replaced"
        case "$name" in
            gitlab_root_password)
                echo "    note: GitLab reads it only when it first initialises; change root's password in GitLab" ;;
            bidsflux_s3_access_key|bidsflux_s3_secret_key)
                echo "    note: MinIO's user follows (minio-setup runs again); run 'bidsflux deploy init' again" \
                     "to update the CI/CD variable $(printf '%s' "$name" | tr '[:lower:]' '[:upper:]') in GitLab" ;;
        esac
    fi
    case "$kind" in
        password|user|access-key)
            # Shown once: keep it in the site's password safe now.
            echo "    $name = $value"
            shown=1 ;;
    esac
    unset value
done

if [ ${#todo[@]} -eq 0 ]; then
    echo "nothing to do: every secret exists"
fi
if [ "$shown" = 1 ]; then
    echo "The values above are shown this once and kept nowhere else: store them in the site's password safe."
fi
