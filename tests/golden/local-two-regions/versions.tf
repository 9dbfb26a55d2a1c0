# Rendered by mlinfra. Structure only: every value comes from terraform.tfvars.json.
terraform {
  required_version = ">= 1.5"
  backend "local" {
    path = "terraform.tfstate"
  }
}
