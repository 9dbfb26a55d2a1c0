# Rendered by mlinfra. Structure only: every value comes from terraform.tfvars.json.
terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source = "hashicorp/google"
      # The 6.x line whose schema mlinfra checks against; nothing here needs a 7.x field.
      version = "~> 6.50"
    }
  }

  backend "local" {
    path = "terraform.tfstate"
  }
}

provider "google" {
  project = var.project
}
