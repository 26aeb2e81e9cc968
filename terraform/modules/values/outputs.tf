output "values" {
  description = "The chart's values, as an object."
  value       = local.values
}

output "values_yaml" {
  description = "The chart's values as YAML, for helm_release's `values`."
  value       = yamlencode(local.values)
}

output "pods" {
  description = "Each pod's name, p2p ports (TCP and UDP), node port, requested address and Service."
  value       = local.ports
}
