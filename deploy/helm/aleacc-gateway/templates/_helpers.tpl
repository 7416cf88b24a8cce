{{/* Names and labels. */}}
{{- define "aleacc-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aleacc-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "aleacc-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aleacc-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "aleacc-gateway.labels" -}}
{{ include "aleacc-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: aleacc-gateway
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "aleacc-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aleacc-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "aleacc-gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The default tenant's secret file, where its source puts it. */}}
{{- define "aleacc-gateway.secretFile" -}}
{{- if eq .Values.apiSecret.source "vaultAgent" }}/vault/secrets/api-secret
{{- else }}/run/secrets/aleacc/api-secret
{{- end }}
{{- end }}

{{/* A URL's port, or .default when it names none. */}}
{{- define "aleacc-gateway.urlPort" -}}
{{- regexFind ":[0-9]+$" (urlParse .url).host | trimPrefix ":" | default .default | int }}
{{- end }}

{{/* "secret" or "configMap": where the limits store's CA comes from ("" for none). */}}
{{- define "aleacc-gateway.storeCa" -}}
{{- with .Values.limitsStore }}
{{- if and .url .ca.secret }}secret{{ else if and .url .ca.configMap }}configMap{{ end }}
{{- end }}
{{- end }}

{{/* Refuses the limits store values check-config would refuse, naming the values. */}}
{{- define "aleacc-gateway.checkLimitsStore" -}}
{{- with .Values.limitsStore }}
{{- if regexMatch "^[a-z]+://[^/@]*:[^/@]*@" .url }}
{{- fail "limitsStore.url: never a password in the URL: put it in the Secret limitsStore.passwordSecret" }}
{{- end }}
{{- if and .ca.secret .ca.configMap }}
{{- fail "limitsStore.ca: set secret or configMap, not both" }}
{{- end }}
{{- if and .url (or .ca.secret .ca.configMap) (not (hasPrefix "rediss://" .url)) }}
{{- fail "limitsStore.ca: needs a rediss:// limitsStore.url" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Service names a tenant's Host may carry: short, namespaced and full. */}}
{{- define "aleacc-gateway.serviceHosts" -}}
{{- $name := .name }}
{{- $ns := .root.Release.Namespace }}
{{- toJson (list $name (printf "%s.%s.svc" $name $ns) (printf "%s.%s.svc.%s" $name $ns .root.Values.clusterDomain)) }}
{{- end }}

{{- define "aleacc-gateway.tenantService" -}}
{{- printf "%s-%s" (include "aleacc-gateway.fullname" .root) .tenant.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The gateway's TOML: `config` as written, or `settings` with the keys the chart owns.
Tables and keys come in alphabetical order (TOML does not mind). Each value is written
with toJson: a JSON string, number, boolean or array of them is
also TOML, and whole numbers stay whole (toToml would write Helm's float64 as 5.0).
*/}}
{{- define "aleacc-gateway.toml" -}}
{{- if .Values.config }}
{{- .Values.config }}
{{- else }}
{{- $s := deepCopy .Values.settings }}
{{- $server := dict "listen" (printf "0.0.0.0:%d" (int .Values.ports.proxy)) "admin_listen" (printf "0.0.0.0:%d" (int .Values.ports.admin)) }}
{{- if .Values.tls.enabled }}
{{- $_ := set $server "tls_cert_file" "/run/secrets/tls/tls.crt" }}
{{- $_ := set $server "tls_key_file" "/run/secrets/tls/tls.key" }}
{{- if .Values.tls.clientCertificates }}
{{- $_ := set $server "tls_client_ca_file" "/run/secrets/tls/ca.crt" }}
{{- end }}
{{- end }}
{{- $_ := set $s "server" (merge $server (get $s "server" | default (dict))) }}
{{- $signing := dict "secret_file" (include "aleacc-gateway.secretFile" .) }}
{{- $_ := set $s "signing" (merge $signing (get $s "signing" | default (dict))) }}
{{- if .Values.egressProxy.url }}
{{- $upstream := dict "proxy_url" .Values.egressProxy.url }}
{{- if .Values.egressProxy.credentialsSecret }}
{{- $_ := set $upstream "proxy_auth_file" "/run/secrets/proxy/credentials" }}
{{- end }}
{{- $_ := set $s "upstream" (merge $upstream (get $s "upstream" | default (dict))) }}
{{- end }}
{{- with .Values.limitsStore }}
{{- if .url }}
{{- $limits := dict "store_url" .url }}
{{- if .passwordSecret }}
{{- $_ := set $limits "store_password_file" "/run/secrets/aleacc-redis/password" }}
{{- end }}
{{- if include "aleacc-gateway.storeCa" $ }}
{{- $_ := set $limits "store_ca_file" "/run/secrets/aleacc-redis-ca/ca.crt" }}
{{- end }}
{{- $_ := set $s "limits" (merge $limits (get $s "limits" | default (dict))) }}
{{- end }}
{{- end }}
{{- range $table, $keys := $s }}
{{- with $keys }}
[{{ $table }}]
{{- include "aleacc-gateway.tomlKeys" . }}
{{ end }}
{{- end }}
{{- range $i, $t := .Values.tenants }}
{{- $tenant := deepCopy ($t.settings | default (dict)) }}
{{- $_ := set $tenant "name" $t.name }}
{{- $_ := set $tenant "secret_file" (printf "/run/secrets/aleacc-%s/api-secret" $t.name) }}
{{- if $t.port }}
{{- $_ := set $tenant "listen" (printf "0.0.0.0:%d" (int $t.port)) }}
{{- end }}
{{- if and $t.service (not (hasKey $tenant "hosts")) }}
{{- $hosts := include "aleacc-gateway.serviceHosts" (dict "root" $ "name" (include "aleacc-gateway.tenantService" (dict "root" $ "tenant" $t))) | fromJsonArray }}
{{- $_ := set $tenant "hosts" $hosts }}
{{- end }}
[[tenants]]
{{- include "aleacc-gateway.tomlKeys" $tenant }}
{{ end }}
{{- end }}
{{- end }}

{{- define "aleacc-gateway.tomlKeys" -}}
{{- range $key, $value := . }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The gateway container. The Deployment's mounts every volume the values ask for; the
Kyverno policy's (sidecar) mounts the three a sidecar needs, under names prefixed so as
not to clash with the pod's own.
*/}}
{{- define "aleacc-gateway.container" -}}
{{- $root := .root }}
{{- $v := $root.Values -}}
name: {{ .name }}
image: {{ include "aleacc-gateway.image" $root }}
{{- with $v.image.pullPolicy }}
imagePullPolicy: {{ . }}
{{- end }}
{{- if .sidecar }}
restartPolicy: Always
{{- end }}
args: ["serve", "--config", "/etc/aleacc-gateway/gateway.toml"]
ports:
  - name: proxy
    containerPort: {{ $v.ports.proxy }}
  - name: admin
    containerPort: {{ $v.ports.admin }}
{{- if not .sidecar }}
{{- range $i, $t := $v.tenants }}
{{- if $t.port }}
  - name: {{ printf "tenant-%d" $i }}
    containerPort: {{ $t.port }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (not .sidecar) $v.extraEnv }}
env:
  {{- toYaml $v.extraEnv | nindent 2 }}
{{- end }}
livenessProbe:
  {{- toYaml $v.livenessProbe | nindent 2 }}
readinessProbe:
  {{- toYaml $v.readinessProbe | nindent 2 }}
resources:
  {{- toYaml $v.resources | nindent 2 }}
securityContext:
  {{- toYaml $v.securityContext | nindent 2 }}
volumeMounts:
  - name: {{ .prefix }}config
    mountPath: /etc/aleacc-gateway
    readOnly: true
  {{- if or .sidecar (ne $v.apiSecret.source "vaultAgent") }}
  # The whole Secret as a directory, never subPath: Kubernetes swaps the "..data"
  # symlink on rotation and only a directory mount sees the swap.
  - name: {{ .prefix }}api-secret
    mountPath: /run/secrets/aleacc
    readOnly: true
  {{- end }}
  - name: {{ .prefix }}tmp
    mountPath: /tmp
  {{- if not .sidecar }}
  {{- range $v.tenants }}
  - name: {{ printf "api-secret-%s" .name | trunc 63 }}
    mountPath: /run/secrets/aleacc-{{ .name }}
    readOnly: true
  {{- end }}
  {{- if $v.tls.enabled }}
  - name: tls
    mountPath: /run/secrets/tls
    readOnly: true
  {{- end }}
  {{- if $v.egressProxy.credentialsSecret }}
  - name: proxy-credentials
    mountPath: /run/secrets/proxy
    readOnly: true
  {{- end }}
  {{- if and $v.limitsStore.url $v.limitsStore.passwordSecret }}
  - name: redis-password
    mountPath: /run/secrets/aleacc-redis
    readOnly: true
  {{- end }}
  {{- if include "aleacc-gateway.storeCa" $root }}
  - name: redis-ca
    mountPath: /run/secrets/aleacc-redis-ca
    readOnly: true
  {{- end }}
  {{- with $v.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- end }}
{{- end }}
