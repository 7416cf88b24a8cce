{{/* "auto": on when the cluster serves the Prometheus Operator's API. */}}
{{- define "aleacc-gateway.monitoring" -}}
{{- if eq (toString .enabled) "auto" }}
{{- if .root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- else if .enabled }}true
{{- end }}
{{- end }}
