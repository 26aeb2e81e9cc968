# No provider: everything here is computed, so `terraform test` runs it offline.
terraform {
  required_version = ">= 1.9"
}
