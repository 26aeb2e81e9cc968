output "pods" {
  description = "Each pod's p2p ports, node port, requested address and Service."
  value       = module.values.pods
}

output "release" {
  description = "The Helm release's name, namespace and chart version."
  value = {
    name      = helm_release.pylon.name
    namespace = helm_release.pylon.namespace
    version   = helm_release.pylon.version
  }
}
