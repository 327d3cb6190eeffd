# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""ament_python package definition."""

from glob import glob

from setuptools import find_packages, setup

package_name = 'demand_layering_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(include=[package_name, package_name + '.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='demand_layering_ros maintainers',
    maintainer_email='maintainers@demand-layering-ros.invalid',
    description='Demand-layered DNN detection for ROS 2 under a memory budget and a deadline.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'detector_node = demand_layering_ros.ros.entry:detector_node',
            'camera_node = demand_layering_ros.ros.camera:main',
            'demand_layering_ros = demand_layering_ros.cli:main',
        ],
        'demand_layering_ros.models': [
            'torchvision = demand_layering_ros.models.tv_models:build',
            'darknet = demand_layering_ros.models.darknet:build',
        ],
    },
)
