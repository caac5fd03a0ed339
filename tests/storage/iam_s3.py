"""An S3 endpoint on loopback that enforces IAM policies: moto's server mode with its request
authorisation turned on, for tests of what each set of credentials may do.

moto checks every request against the IAM policies of the user whose access key signed it once
``/moto-api/reset-auth`` set the number of requests it lets through unchecked (0 here; the switch
is global to the server process, so this is a server of its own, never the session's). Users,
their inline policies and access keys are made through moto's IAM API with boto3, as on AWS.

What moto enforces, read from its source (moto 5.2: ``moto/s3/responses.py``,
``moto/iam/access_control.py``): the action of each request (``s3:GetObject`` for GET and HEAD
of an object, ``s3:ListBucket`` for a listing, ``s3:PutObject`` for a PUT and for the requests of
a multipart upload, ``s3:DeleteObject``, ``s3:AbortMultipartUpload``,
``s3:ListBucketMultipartUploads``, ``s3:ListMultipartUploadParts``) against the resource
``arn:aws:s3:::bucket`` or ``arn:aws:s3:::bucket/key``, ``*`` as a wildcard, Deny before Allow.
One difference from AWS: a ``DeleteObjects`` request (s3fs's bulk removal) is checked once, as
``s3:DeleteObject`` on the *bucket's* ARN, where AWS checks each key's ARN; refused, moto answers
200 and lists every key as ``AccessDenied``, as AWS does for the keys it refuses. A policy that
grants ``s3:DeleteObject`` on ``bucket/prefix/*`` only therefore needs the bucket's ARN beside it
on moto (:func:`moto_resources`).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3
import requests

from storage.loopback_s3 import start_moto_server, stop_server

REGION = "us-east-1"


def moto_resources(policy: dict[str, Any], bucket: str) -> dict[str, Any]:
    """``policy`` with the bucket's ARN added to every statement that allows ``s3:DeleteObject``
    (moto checks a ``DeleteObjects`` request against the bucket, AWS each key: module docstring)."""
    statements = []
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if statement["Effect"] == "Allow" and "s3:DeleteObject" in actions:
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            statement = {**statement, "Resource": [*resources, f"arn:aws:s3:::{bucket}"]}
        statements.append(statement)
    return {**policy, "Statement": statements}


class IamS3:
    """A moto server enforcing IAM (module docstring). ``endpoint`` is its URL; ``admin`` the
    environment of a user allowed everything (who makes buckets, users and stores)."""

    def __init__(self) -> None:
        self._proc, self.endpoint = start_moto_server()
        try:
            self.admin = self._new_user("admin", {"Version": "2012-10-17",
                                                  "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
            requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"0", timeout=30).raise_for_status()
        except BaseException:
            stop_server(self._proc)
            raise

    def close(self) -> None:
        stop_server(self._proc)

    def _client(self, service: str, env: dict[str, str] | None) -> Any:
        keys = env or {"AWS_ACCESS_KEY_ID": "unchecked", "AWS_SECRET_ACCESS_KEY": "unchecked"}
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"], aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"])

    def _new_user(self, name: str, policy: dict[str, Any], by: dict[str, str] | None = None) -> dict[str, str]:
        iam = self._client("iam", by)
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": REGION}

    def user(self, policy: dict[str, Any]) -> dict[str, str]:
        """A new IAM user with ``policy`` inline; returns the AWS environment of its access key."""
        return self._new_user(f"u-{uuid.uuid4().hex[:10]}", policy, by=self.admin)

    def bucket(self) -> str:
        """A new bucket (made by the admin)."""
        name = f"prh-iam-{uuid.uuid4().hex[:10]}"
        self._client("s3", self.admin).create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> dict[str, str]:
        """Every object of ``bucket`` (as the admin sees it): key -> ETag."""
        s3, found, token = self._client("s3", self.admin), {}, {}
        while True:
            page = s3.list_objects_v2(Bucket=bucket, **token)
            found.update({item["Key"]: item["ETag"] for item in page.get("Contents", [])})
            if not page.get("IsTruncated"):
                return found
            token = {"ContinuationToken": page["NextContinuationToken"]}


def use_credentials(monkeypatch: Any, env: dict[str, str]) -> None:
    """Make ``env``'s keys the ones every Store opened from now on uses: the AWS variables set
    (restored by ``monkeypatch``) and s3fs's cache of filesystem instances cleared (an instance is
    shared by every Store of the same options, the credentials it connected with included)."""
    import s3fs

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
