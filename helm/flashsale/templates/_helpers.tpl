{{/*
Names, labels and the pieces every component's pod shares.
*/}}

{{- define "flashsale.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flashsale.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "flashsale.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "flashsale.labels" -}}
helm.sh/chart: {{ include "flashsale.chart" . }}
app.kubernetes.io/name: {{ include "flashsale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flashsale
{{- end }}

{{/* Selector labels of one component; call with (dict "root" $ "component" "gateway"). */}}
{{- define "flashsale.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flashsale.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Every label of one component's resources. */}}
{{- define "flashsale.componentLabels" -}}
{{ include "flashsale.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "flashsale.serviceAccountName" -}}
{{- default (include "flashsale.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "flashsale.secretName" -}}
{{- default (include "flashsale.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* `repository:tag` or `repository@digest`. */}}
{{- define "flashsale.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The key holding NATS credentials, or nothing. */}}
{{- define "flashsale.natsAuthKey" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.keys.natsAuth }}
{{- else if .Values.nats.auth }}
{{- .Values.secrets.keys.natsAuth | default "nats-auth" }}
{{- end }}
{{- end }}

{{/* The Secret key holding the waiting rooms' signing key; empty: they use the HS256 secret. */}}
{{- define "flashsale.roomSecretKey" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.keys.waitingRoomSecret }}
{{- else if .Values.auth.waitingRoomSecret }}
{{- .Values.secrets.keys.waitingRoomSecret | default "waiting-room-secret" }}
{{- end }}
{{- end }}

{{- define "flashsale.usesPublicKey" -}}
{{- if and (ne .Values.auth.algorithm "HS256") (not .Values.auth.jwksUrl) }}true{{ end }}
{{- end }}

{{/* Tokens are verified with the HS256 shared secret. */}}
{{- define "flashsale.usesSecret" -}}
{{- if eq .Values.auth.algorithm "HS256" }}true{{ end }}
{{- end }}

{{/* Fixed ports: the configuration the chart writes listens on these. */}}
{{- define "flashsale.port.sidecar" -}}50050{{- end }}
{{- define "flashsale.port.gateway" -}}50051{{- end }}
{{/* Plaintext gRPC health only, for kubelet probes and `helm test` (server.health_listen). */}}
{{- define "flashsale.port.health" -}}50058{{- end }}
{{- define "flashsale.port.inventory" -}}50052{{- end }}
{{- define "flashsale.port.orders" -}}50053{{- end }}
{{- define "flashsale.port.consumer" -}}50055{{- end }}
{{- define "flashsale.port.metrics" -}}9090{{- end }}
{{- define "flashsale.port.sidecarMetrics" -}}9091{{- end }}

{{/*
Whole numbers from values arrive as floats and would be written as `3.0`, which the mesh's
typed configuration refuses for integer keys: turn them back into integers, in place.
*/}}
{{- define "flashsale.integers" -}}
{{- $map := . }}
{{- range $key, $value := $map }}
{{- if kindIs "float64" $value }}
{{- if eq $value (floor $value) }}
{{- $_ := set $map $key (int64 $value) }}
{{- end }}
{{- else if kindIs "map" $value }}
{{- include "flashsale.integers" $value }}
{{- else if kindIs "slice" $value }}
{{- $items := list }}
{{- range $value }}
{{- if and (kindIs "float64" .) (eq . (floor .)) }}
{{- $items = append $items (int64 .) }}
{{- else }}
{{- $items = append $items . }}
{{- end }}
{{- end }}
{{- $_ := set $map $key $items }}
{{- end }}
{{- end }}
{{- end }}

{{/* flashsale.toml: the operator's `config` with the chart's wiring over it. */}}
{{- define "flashsale.configToml" -}}
{{- $fullname := include "flashsale.fullname" . }}
{{- $scheme := ternary "https" "http" .Values.tls.enabled }}
{{- $inventory := printf "%s://%s-inventory:%s" $scheme $fullname (include "flashsale.port.inventory" .) }}
{{- /* With TLS the gateway is reached only through its sidecar, in the same pod. */}}
{{- $gatewayHost := ternary "127.0.0.1" "0.0.0.0" .Values.tls.enabled }}
{{- $auth := dict "algorithm" .Values.auth.algorithm "audience" .Values.auth.audience "issuer" .Values.auth.issuer }}
{{- if include "flashsale.usesPublicKey" . }}
{{- $_ := set $auth "public_key_file" "/etc/flashsale/jwt/public.pem" }}
{{- $_ := set $auth "secret" "" }}
{{- else if not (include "flashsale.usesSecret" .) }}
{{- $_ := set $auth "jwks" .Values.auth.jwksUrl }}
{{- $_ := set $auth "jwks_refresh" .Values.auth.jwksRefresh }}
{{- $_ := set $auth "secret" "" }}
{{- end }}
{{- $wiring := dict
  "telemetry" (dict "metrics_listen" (printf "0.0.0.0:%s" (include "flashsale.port.metrics" .)))
  "gateway" (dict
    "listen" (printf "%s:%s" $gatewayHost (include "flashsale.port.gateway" .))
    "inventory_url" $inventory
    "orders_url" (printf "%s://%s-orders:%s" $scheme $fullname (include "flashsale.port.orders" .))
    "auth" $auth)
  "inventory" (dict "listen" (printf "0.0.0.0:%s" (include "flashsale.port.inventory" .)))
  "orders" (dict
    "listen" (printf "0.0.0.0:%s" (include "flashsale.port.orders" .))
    "consumer_listen" (printf "0.0.0.0:%s" (include "flashsale.port.consumer" .))
    "inventory_url" $inventory)
  "limiter" (dict
    "rules_file" "/etc/flashsale/limits/limits.yaml"
    "sidecar" (dict
      "listen" (printf "0.0.0.0:%s" (include "flashsale.port.sidecar" .))
      "upstream" (printf "http://127.0.0.1:%s" (include "flashsale.port.gateway" .))))
}}
{{- $_ := set $wiring "server" (dict "health_listen" (printf "0.0.0.0:%s" (include "flashsale.port.health" .))) }}
{{- if .Values.tls.enabled }}
{{- $_ := set $wiring "tls" (dict "cert" "/etc/flashsale/tls/tls.crt" "key" "/etc/flashsale/tls/tls.key" "ca" "/etc/flashsale/tls/ca.crt") }}
{{- end }}
{{- $config := mergeOverwrite (deepCopy .Values.config) $wiring }}
{{- include "flashsale.integers" $config }}
{{- toToml $config }}
{{- end }}

{{/* Pod-level security: a non-root user, the runtime's seccomp profile. */}}
{{- define "flashsale.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security: nothing writable, nothing gained. */}}
{{- define "flashsale.securityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Environment of every flashsale container. */}}
{{- define "flashsale.env" -}}
- name: FLASHSALE_CONFIG
  value: /etc/flashsale/config/flashsale.toml
- name: FLASHSALE_SECRETS_DIR
  value: /etc/flashsale/secrets
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_RESOURCE_ATTRIBUTES
  value: k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)
{{- end }}

{{/* Mounts of every flashsale container. */}}
{{- define "flashsale.volumeMounts" -}}
- name: config
  mountPath: /etc/flashsale/config
  readOnly: true
- name: secrets
  mountPath: /etc/flashsale/secrets
  readOnly: true
{{- include "flashsale.tlsMount" . }}
{{- end }}

{{/* The mesh's certificate, where `[tls]` reads it (every container reading the config). */}}
{{- define "flashsale.tlsMount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/flashsale/tls
  readOnly: true
{{- end }}
{{- end }}

{{/* The Secret holding the mesh's certificate. */}}
{{- define "flashsale.tlsSecretName" -}}
{{- .Values.tls.existingSecret | default (printf "%s-mesh-tls" (include "flashsale.fullname" .)) }}
{{- end }}

{{/* Whether cert-manager issues the mesh's certificate. */}}
{{- define "flashsale.tlsByCertManager" -}}
{{- $on := .Values.tls.certManager.enabled }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- if or (eq (toString $on) "true") (and (eq (toString $on) "auto") (.Capabilities.APIVersions.Has "cert-manager.io/v1")) }}true{{ end }}
{{- end }}
{{- end }}

{{/* The names the mesh's certificate is valid for: every internal Service, short and long. */}}
{{- define "flashsale.tlsNames" -}}
{{- $fullname := include "flashsale.fullname" . }}
{{- range $component := list "inventory" "orders" "consumer" "gateway" }}
{{- $name := printf "%s-%s" $fullname $component }}
- {{ $name }}
- {{ $name }}.{{ $.Release.Namespace }}.svc
- {{ $name }}.{{ $.Release.Namespace }}.svc.cluster.local
{{- end }}
{{- end }}

{{/*
The secrets one container reads, each mounted as a file named by the key it sets; call with
(dict "root" $ "need" (list "redis" "postgres" "nats" "jwt")) and optionally "name".
*/}}
{{- define "flashsale.secretsVolume" -}}
{{- $root := .root }}
{{- $keys := $root.Values.secrets.keys -}}
- name: {{ .name | default "secrets" }}
  secret:
    secretName: {{ include "flashsale.secretName" $root }}
    defaultMode: 288  # 0440: owner and group read only
    items:
      {{- if has "redis" .need }}
      - key: {{ $keys.redisUrl }}
        path: redis.url
      {{- end }}
      {{- if has "postgres" .need }}
      - key: {{ $keys.postgresUrl }}
        path: postgres.url
      {{- end }}
      {{- if has "nats" .need }}
      - key: {{ $keys.natsUrl }}
        path: nats.url
      {{- end }}
      {{- if and (has "nats" .need) (include "flashsale.natsAuthKey" $root) }}
      - key: {{ include "flashsale.natsAuthKey" $root }}
        path: nats.auth
      {{- end }}
      {{- if and (has "jwt" .need) (include "flashsale.usesSecret" $root) }}
      - key: {{ $keys.jwtSecret }}
        path: gateway.auth.secret
      {{- end }}
      {{- if and (has "jwt" .need) (include "flashsale.roomSecretKey" $root) }}
      - key: {{ include "flashsale.roomSecretKey" $root }}
        path: gateway.waiting_room_secret
      {{- end }}
{{- end }}

{{/* The config volume, and the rolling-restart checksum of what it holds. */}}
{{- define "flashsale.configVolume" -}}
- name: config
  configMap:
    name: {{ include "flashsale.fullname" . }}-config
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "flashsale.tlsSecretName" . }}
    defaultMode: 288  # 0440: owner and group read only
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end }}

{{- define "flashsale.podAnnotations" -}}
checksum/config: {{ include "flashsale.configToml" . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ include "flashsale.port.metrics" . | quote }}
prometheus.io/path: /metrics
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Scheduling shared by every component; call with (dict "root" $ "component" "gateway"). */}}
{{- define "flashsale.scheduling" -}}
{{- $root := .root -}}
serviceAccountName: {{ include "flashsale.serviceAccountName" $root }}
automountServiceAccountToken: false
enableServiceLinks: false
terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds }}
securityContext:
  {{- include "flashsale.podSecurityContext" $root | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  {{- range $key := list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
  - maxSkew: 1
    topologyKey: {{ $key }}
    whenUnsatisfiable: {{ $root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "flashsale.selectorLabels" (dict "root" $root "component" $.component) | nindent 8 }}
    matchLabelKeys:
      - pod-template-hash
  {{- end }}
{{- end }}
{{- end }}

{{/* Waits out endpoint propagation before the process starts draining. */}}
{{- define "flashsale.lifecycle" -}}
preStop:
  sleep:
    seconds: {{ .Values.preStopSleepSeconds }}
{{- end }}

{{/* gRPC health probes on `port` (the health port: plaintext, TLS or not); call with
(dict "port" 50058). */}}
{{- define "flashsale.grpcProbes" -}}
startupProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: 2
  failureThreshold: 60
readinessProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
{{- end }}

{{/* The schema migration every Postgres-using pod runs first (serialized by an advisory lock). */}}
{{- define "flashsale.migrateInit" -}}
- name: migrate
  image: {{ include "flashsale.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["migrate"]
  env:
    {{- include "flashsale.env" . | nindent 4 }}
  volumeMounts:
    {{- include "flashsale.volumeMounts" . | nindent 4 }}
  securityContext:
    {{- include "flashsale.securityContext" . | nindent 4 }}
  resources:
    requests: {cpu: 50m, memory: 64Mi}
    limits: {cpu: 500m, memory: 128Mi}
{{- end }}
