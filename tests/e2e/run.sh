#!/usr/bin/env bash
# The kind suite (`make e2e`): the operator, built into an image and installed with its Helm chart on
# a fresh kind cluster, takes one database through its whole life:
#
#   Active (answering psql over TLS and POST /sql through the gateway, with a password and with a
#   ServiceAccount's token as the role bound to it) -> pauses when idle -> wakes
#   when a client connects (the connection is held, not refused) -> pauses again -> a client of the
#   pooled endpoint (<name>-pooler, PgBouncer) wakes it, and pgbench's prepared statements run
#   through it in transaction mode -> pauses, and wakes on POST /sql -> pauses again -> parks ->
#   wakes from parked -> pooling turned off removes the pooler -> the ServerlessDatabase is
#   deleted, its PVC and Secret stay -> a new ServerlessDatabase of the same name finds the data
#   again.
#
# Needs: docker (a running engine), kind, and kubectl and helm (./dev setup fetches both into
# .cache/tools; else from PATH). Environment:
#   SDB_E2E_CLUSTER   kind cluster name (default sdb-e2e); an existing one is reused, and kept
#   SDB_E2E_KEEP=1    keep the cluster this run created (default: deleted at the end)
#   KIND_NODE_IMAGE   node image for kind (default: kind's own; in-place resize needs Kubernetes 1.33+)
#   SDB_E2E_TIMEOUT   seconds to wait for each step (default 300)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

CLUSTER=${SDB_E2E_CLUSTER:-sdb-e2e}
TIMEOUT=${SDB_E2E_TIMEOUT:-300}
IMAGE=serverless-db-operator:e2e
RELEASE=serverless-db-operator
SYSTEM=sdb-system
NS=sdb-e2e
DB=orders
export PATH="$ROOT/.cache/tools:$PATH"

say() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl helm; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
docker info >/dev/null 2>&1 || fail "docker cannot reach an engine (docker info failed)"

created=0
cleanup() {
    local status=$?
    if [ $status -ne 0 ]; then
        say "diagnostics (exit $status)"
        kubectl get sdb,statefulsets,pods,svc,endpointslices,pvc,secrets -n "$NS" -o wide || true
        kubectl describe sdb -n "$NS" || true
        kubectl get events -n "$NS" --sort-by=.lastTimestamp | tail -40 || true
        kubectl get pods -n "$SYSTEM" -o wide || true
        kubectl logs -n "$SYSTEM" -l app.kubernetes.io/component=operator --tail=200 --prefix || true
        kubectl logs -n "$SYSTEM" -l app.kubernetes.io/component=activator --tail=100 --prefix || true
    fi
    if [ "$created" = 1 ] && [ "${SDB_E2E_KEEP:-0}" != 1 ]; then
        say "deleting kind cluster $CLUSTER"
        kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    fi
    exit $status
}
trap cleanup EXIT

# Wait until `kubectl get` of $1 (in $NS) prints $3 for jsonpath $2.
wait_for() {
    local what=$1 path=$2 want=$3 deadline=$((SECONDS + TIMEOUT)) got=""
    while [ $SECONDS -lt $deadline ]; do
        got=$(kubectl get -n "$NS" "$what" -o "jsonpath=$path" 2>/dev/null || true)
        [ "$got" = "$want" ] && return 0
        sleep 2
    done
    fail "$what: $path is '$got' after ${TIMEOUT}s, wanted '$want'"
}

phase() { wait_for "sdb/$DB" '{.status.phase}' "$1"; }

# Run SQL from the client pod through the database's Service (its stable endpoint), as the application
# role, over TLS with the server's certificate checked against the operator's CA.
sql() {
    kubectl exec -n "$NS" psql -- env PGPASSWORD="$PASSWORD" PGCONNECT_TIMEOUT=120 \
        PGSSLMODE=verify-full PGSSLROOTCERT=/tmp/ca.crt \
        psql -h "$DB.$NS.svc" -U app -d app -v ON_ERROR_STOP=1 -tAc "$1"
}

# A client command run the same way, for the pooled endpoint (the Service <name>-pooler).
pooled() {
    kubectl exec -n "$NS" psql -- env PGPASSWORD="$PASSWORD" PGCONNECT_TIMEOUT=120 \
        PGSSLMODE=verify-full PGSSLROOTCERT=/tmp/ca.crt "$@"
}

# POST /sql through the activator's gateway (HTTPS, checked against the operator's CA), as
# @neondatabase/serverless sends it: the database is named by the connection string's host, its
# Service name. Prints the response body; fails on anything but HTTP $2 (default 200).
GATEWAY="$RELEASE-activator.$SYSTEM.svc"
http_sql() {
    post_sql "postgresql://app:$PASSWORD@$DB.$NS.svc/app" "" "$@"
}

# POST /sql as a role bound to an identity: no password, the token ($1) as the driver's authToken
# (an Authorization: Bearer header).
token_sql() {
    local token=$1
    shift
    post_sql "postgresql://e2e_reader@$DB.$NS.svc/tokens" "Authorization: Bearer $token" "$@"
}

# post_sql CONNECTION-STRING HEADER QUERY [WANTED-STATUS]
post_sql() {
    local want=${4:-200} out status
    out=$(kubectl exec -n "$NS" curl -- curl -sS --max-time 150 --cacert /tmp/ca.crt -w '\n%{http_code}' \
        -H "Neon-Connection-String: $1" ${2:+-H "$2"} \
        -H 'Neon-Raw-Text-Output: true' -H 'Neon-Array-Mode: true' \
        --data "{\"query\": \"$3\", \"params\": []}" "https://$GATEWAY/sql")
    status=${out##*$'\n'}
    [ "$status" = "$want" ] || fail "POST /sql '$3' answered HTTP $status, wanted $want: ${out%$'\n'*}"
    printf '%s\n' "${out%$'\n'*}"
}

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    say "reusing kind cluster $CLUSTER"
else
    say "creating kind cluster $CLUSTER"
    kind create cluster --name "$CLUSTER" --wait 180s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
    created=1
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

say "building $IMAGE and loading it into the cluster"
docker build -t "$IMAGE" "$ROOT"
kind load docker-image "$IMAGE" --name "$CLUSTER"

say "installing the chart"
helm upgrade --install "$RELEASE" charts/serverless-db-operator \
    --namespace "$SYSTEM" --create-namespace \
    --set image.repository="${IMAGE%%:*}" --set-string image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
    --set activator.wakeTimeout=120 \
    --wait --timeout "${TIMEOUT}s"
kubectl get crd serverlessdatabases.dbscale.io >/dev/null

say "a database that pauses after 20s idle and parks 30s later"
kubectl delete namespace "$NS" --ignore-not-found --wait --timeout="${TIMEOUT}s"   # a reused cluster's leftovers
kubectl create namespace "$NS"
kubectl apply -n "$NS" -f - <<EOF
apiVersion: dbscale.io/v1alpha1
kind: ServerlessDatabase
metadata:
  name: $DB
spec:
  storage: {size: 1Gi}
  capacity: {min: 0.25, max: 1}
  autoPause: {enabled: true, idleAfter: 20s}
  autoPark: {enabled: true, idleAfter: 30s}
  pooling: {enabled: true, mode: transaction}
  roles: [{name: e2e_reader, login: true}]
  databases: [{name: tokens, owner: e2e_reader}]
  access:
    identities: [{serviceAccount: {namespace: $NS, name: e2e-client}, role: e2e_reader}]
EOF
kubectl create serviceaccount -n "$NS" e2e-client
# A client that stays around without a session; exec-ing psql in it is each test's connection.
kubectl run psql -n "$NS" --image=postgres:16 --restart=Never --command -- sleep infinity
kubectl run curl -n "$NS" --image=curlimages/curl:8.11.1 --restart=Never --command -- sleep infinity
kubectl wait -n "$NS" pod/psql pod/curl --for=condition=Ready --timeout="${TIMEOUT}s"

phase Active
PASSWORD=$(kubectl get secret -n "$NS" "$DB-app" -o jsonpath='{.data.password}' | base64 -d)
[ -n "$PASSWORD" ] || fail "the Secret $DB-app holds no password"
kubectl get configmap -n "$NS" serverless-db-ca -o jsonpath='{.data.ca\.crt}' |
    kubectl exec -i -n "$NS" psql -- sh -c 'cat > /tmp/ca.crt'
kubectl get configmap -n "$NS" serverless-db-ca -o jsonpath='{.data.ca\.crt}' |
    kubectl exec -i -n "$NS" curl -- sh -c 'cat > /tmp/ca.crt'
[ "$(sql 'select ssl from pg_stat_ssl where pid = pg_backend_pid()')" = t ] || fail "the session is not encrypted"
[ "$(sql 'select 1')" = 1 ] || fail "select 1 on the active database"
sql "create table e2e_marker (note text); insert into e2e_marker values ('kept')" >/dev/null
say "Active, and it answers queries"
http_sql 'select 1' | grep -qF '"rows":[["1"]]' || fail "POST /sql select 1 on the active database"
http_sql 'select 1/0' 400 | grep -qF '"code":"22012"' || fail "POST /sql: an SQL error without its SQLSTATE"
say "SQL over HTTP through the gateway answers, errors with their SQLSTATE"
# A ServiceAccount's token for this database's audience logs in as the role it is bound to, checked
# by a TokenReview, and reaches Postgres with the gateway's client certificate; one for the API
# server's own audience is refused, saying why.
TOKEN=$(kubectl create token -n "$NS" e2e-client --audience "dbscale.io/$NS/$DB" --duration 10m)
token_sql "$TOKEN" 'select current_user' | grep -qF '"rows":[["e2e_reader"]]' ||
    fail "POST /sql with a ServiceAccount token did not log in as its role"
token_sql "$(kubectl create token -n "$NS" e2e-client --duration 10m)" 'select 1' 400 |
    grep -qF 'the token is for another audience' || fail "a token for another audience was not refused"
say "a ServiceAccount token logs in as its bound role through the gateway"

say "waiting for the pause"
phase Paused
wait_for "statefulset/$DB" '{.spec.replicas}' 0
activators=$(kubectl get pods -n "$SYSTEM" -l app.kubernetes.io/component=activator \
    -o jsonpath='{range .items[*]}{.status.podIP}{"\n"}{end}' | sort | tr '\n' ' ')
routed=$(kubectl get endpointslice -n "$NS" "$DB-sdb" \
    -o jsonpath='{range .endpoints[*]}{.addresses[0]}{"\n"}{end}' | sort | tr '\n' ' ')
[ "$routed" = "$activators" ] || fail "paused: the endpoint leads to '$routed', not the activators '$activators'"
say "Paused: no Postgres pod, the endpoint leads to the activator"

say "a client connects to the paused database"
started=$SECONDS
[ "$(sql 'select note from e2e_marker')" = kept ] || fail "the held connection did not reach the woken database"
say "woken on connect in $((SECONDS - started))s; the connection was held, not refused"
phase Active

say "the pooled endpoint"
wait_for "sdb/$DB" '{.status.pooledEndpoint}' "$DB-pooler.$NS.svc:5432"
kubectl rollout status -n "$NS" "deployment/$DB-pooler" --timeout="${TIMEOUT}s"
for kind in deployment secret service networkpolicy; do
    owner=$(kubectl get -n "$NS" "$kind/$DB-pooler" -o jsonpath='{.metadata.ownerReferences[0].kind}')
    [ "$owner" = ServerlessDatabase ] || fail "$kind/$DB-pooler is not owned by its ServerlessDatabase"
done
phase Paused
say "Paused again; a pooled client connects"
started=$SECONDS
got=$(pooled psql -h "$DB-pooler.$NS.svc" -U app -d app -v ON_ERROR_STOP=1 -tAc 'select note from e2e_marker')
[ "$got" = kept ] || fail "the pooled client did not reach the woken database (got '$got')"
say "woken through the pooler in $((SECONDS - started))s"
phase Active
# Protocol-level prepared statements in transaction mode (PgBouncer 1.21+): four clients, each
# statement run on whichever server connection is free.
kubectl exec -n "$NS" psql -- sh -c 'echo "select note from e2e_marker;" > /tmp/pooled.sql'
pooled pgbench -h "$DB-pooler.$NS.svc" -U app -d app -n -M prepared -c 4 -j 2 -t 200 -f /tmp/pooled.sql \
    >/dev/null || fail "pgbench -M prepared through the pooled endpoint"
say "prepared statements work through the pooler in transaction mode"

say "waiting for the pause; then an HTTP request wakes it"
phase Paused
started=$SECONDS
http_sql 'select note from e2e_marker' | grep -qF '"rows":[["kept"]]' ||
    fail "POST /sql to the paused database did not reach it, woken"
say "woken by POST /sql in $((SECONDS - started))s; the request was held, not refused"
phase Active

say "waiting for the pause, then the park"
phase Paused
phase Parked
if kubectl get statefulset -n "$NS" "$DB" >/dev/null 2>&1; then
    fail "parked, yet the StatefulSet remains"
fi
wait_for "pvc/data-$DB-0" '{.status.phase}' Bound
kubectl get secret -n "$NS" "$DB-credentials" >/dev/null || fail "parked: the Secret is gone"
say "Parked: only the volume and the Secret remain"

say "a client connects to the parked database"
started=$SECONDS
[ "$(sql 'select note from e2e_marker')" = kept ] || fail "the parked database did not wake with its data"
say "woken from parked in $((SECONDS - started))s"
phase Active

say "pooling turned off"
kubectl patch sdb -n "$NS" "$DB" --type merge -p '{"spec":{"pooling":{"enabled":false}}}'
deadline=$((SECONDS + TIMEOUT))
while kubectl get -n "$NS" "deployment/$DB-pooler" >/dev/null 2>&1 ||
    kubectl get -n "$NS" "service/$DB-pooler" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "the pooler outlived spec.pooling.enabled: false"
    sleep 2
done
[ "$(sql 'select note from e2e_marker')" = kept ] || fail "the database after its pooler went"
say "the pooler is gone, the database and its data are not"

say "deleting the ServerlessDatabase"
kubectl delete sdb -n "$NS" "$DB" --wait --timeout="${TIMEOUT}s"
kubectl get pvc -n "$NS" "data-$DB-0" >/dev/null || fail "the PVC went with the ServerlessDatabase"
kubectl get secret -n "$NS" "$DB-credentials" >/dev/null || fail "the Secret went with the ServerlessDatabase"
deadline=$((SECONDS + TIMEOUT))
while kubectl get statefulset -n "$NS" "$DB" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "the StatefulSet outlived its ServerlessDatabase"
    sleep 2
done
say "deleted: compute is gone, the PVC and the Secret are kept (retainOnDelete defaults to true)"

say "the same name again finds the same data"
kubectl apply -n "$NS" -f - <<EOF
apiVersion: dbscale.io/v1alpha1
kind: ServerlessDatabase
metadata:
  name: $DB
spec:
  storage: {size: 1Gi}
  autoPause: {enabled: false}
EOF
phase Active
[ "$(sql 'select note from e2e_marker')" = kept ] || fail "the data did not survive deleting the ServerlessDatabase"

say "cleaning up"
kubectl patch sdb -n "$NS" "$DB" --type merge -p '{"spec":{"storage":{"retainOnDelete":false}}}'
kubectl delete sdb -n "$NS" "$DB" --wait --timeout="${TIMEOUT}s"
kubectl delete namespace "$NS" --wait --timeout="${TIMEOUT}s"
helm uninstall "$RELEASE" --namespace "$SYSTEM" --wait --timeout "${TIMEOUT}s"

say "PASS: the kind suite"
