# Pylon on Kubernetes: the repository's Helm chart (helm/pylon) as a helm_release, its
# values computed by modules/values (validated and tested offline with `terraform test`).

module "values" {
  source = "./modules/values"

  release_name      = var.release_name
  roles             = var.roles
  role_settings     = var.role_settings
  profile           = var.profile
  config            = var.config
  replicas          = var.replicas
  storage_size      = var.storage_size
  storage_class     = var.storage_class
  exposure          = var.exposure
  service_type      = var.service_type
  p2p_port          = var.p2p_port
  load_balancer_ips = var.load_balancer_ips
  node_ports        = var.node_ports
  monitoring        = var.monitoring
  image             = var.image
  resources         = var.resources
}

resource "helm_release" "pylon" {
  name             = var.release_name
  namespace        = var.namespace
  create_namespace = var.create_namespace
  chart            = var.chart != "" ? var.chart : "${path.module}/../helm/pylon"
  # The StatefulSet is ready when its pods answer /readyz; a node that still waits for
  # an AutoNAT verdict would hold the apply, so readiness is not awaited by default.
  wait    = var.wait
  timeout = 600

  values = concat([module.values.values_yaml], var.extra_values)
}
